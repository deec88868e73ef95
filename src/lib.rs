//! tally: a self-hosted conversion tracker.
//!
//! A snippet sends hits to `/collect`; the web process stamps each one,
//! makes it durable on a queue and answers at once. Consumers attribute
//! conversions to the ad clicks before them (the attributor) and keep every
//! raw hit (the archiver). A REST API reports counts and values.
//!
//! # Layout
//! - [`domain`]: hits, goals, attribution models, currencies, report
//!   aggregation. Pure.
//! - [`queue`], [`store`], [`archive`]: one port (trait) each, with an
//!   embedded adapter and a production adapter beside it.
//! - [`worker`]: the attributor and archiver consumers.
//! - [`http`]: collect, snippet, REST API, dashboard (page, sessions, live
//!   stream), health; one error-to-status map; `http::edge`, what the edge
//!   trusts and refuses (proxies, API keys on `/collect`, bots, rate
//!   limits, stalled bodies, the daily visitor salt).
//! - [`live`]: live events (in-process broadcast or a RabbitMQ fanout) for
//!   the dashboard; never counted on.
//! - [`config`]: the typed `Settings`; [`startup`]: picks adapters from
//!   them once and runs the roles until shutdown.
//! - [`telemetry`], [`metrics`]: logs with request ids, Prometheus text.
//! - [`replay`]: archived hits back through the attributor (`tally replay`).
//! - `test_support`: how tests that need a server skip, or fail in CI.

pub mod archive;
pub mod cli;
pub mod config;
pub mod domain;
pub mod http;
pub mod live;
pub mod metrics;
pub mod queue;
pub mod replay;
pub mod startup;
pub mod store;
pub mod telemetry;
#[doc(hidden)]
pub mod test_support;
pub mod worker;
