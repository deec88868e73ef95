//! Pure domain logic: hits, goals, attribution, earliest-wins dedup,
//! referrer and channel classification, currencies, and report
//! aggregation.
//!
//! Nothing in here performs I/O (except `referrer::Classifier::load`,
//! which reads the referrer lists once at start-up), reads the clock
//! (except where a caller passes it in) or knows which adapter is in
//! use. Every function is deterministic so it can be unit- and
//! property-tested.

pub mod adjustment;
pub mod attribution;
pub mod channel;
pub mod currency;
pub mod dedup;
pub mod export;
pub mod goal;
pub mod hit;
pub mod hit_lines;
pub mod markov;
pub mod referrer;
pub mod report;
pub mod rollup;
pub mod site;
pub mod text;

pub use attribution::{
    attribute, credit_split, credits_from_path, window_path, Conversion, Credit, Model, Touchpoint,
};
pub use channel::Channel;
pub use dedup::DuplicateReason;
pub use goal::{CountMode, Goal, GoalDraft, GoalError, GoalMatch, GoalSet, UrlOp};
pub use hit::{Hit, HitError, HitKind, Marketing, PropValue, RawHit, Stamp, VisitorSalt};
pub use hit_lines::{HitKey, HitLines, LineError};
pub use referrer::{touchpoint_labels, Classifier, Labels, ReferralRules, ReferrerListError};
pub use report::{ClickRow, CreditRow, GroupKey, Report, ReportQuery, ReportRow};
pub use site::{ApiKey, Site};
