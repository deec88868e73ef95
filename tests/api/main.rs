//! Black-box tests: each spawns tally on port 0 with its own data
//! directory and drives it over HTTP, as a user would.

mod adjustments;
mod browser;
mod channels;
mod collect;
mod crash;
mod currency;
mod dashboard;
mod dashboard_browser;
mod data_driven;
mod exports;
mod flow;
mod goals;
mod helpers;
mod ops;
mod replay;
mod s3;
mod security;
