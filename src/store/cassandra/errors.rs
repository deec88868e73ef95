//! Driver errors mapped to the port's [`StoreError`]: a backend that
//! cannot answer now is `Unavailable` (retry), a statement that can never
//! work is `Rejected`, a missing keyspace, table or column is `Schema`
//! (run `tally migrate`).

use scylla::errors::{
    DbError, ExecutionError, NewSessionError, NextPageError, NextRowError, PagerExecutionError,
    PrepareError, RequestAttemptError,
};

use crate::store::StoreError;

/// is `Unavailable` (retry), a statement that can never work is `Rejected`,
/// a missing keyspace, table or column is `Schema` (run `tally migrate`).
pub(super) trait IntoStoreError {
    fn into_store(self) -> StoreError;
}

fn missing_schema(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("does not exist")
        || m.contains("unconfigured table")
        || m.contains("undefined column")
        || m.contains("undefined name")
        || m.contains("unknown identifier")
}

pub(crate) fn from_db_error(db: &DbError, message: &str) -> StoreError {
    let text = format!("{db}: {message}");
    match db {
        DbError::Unavailable { .. }
        | DbError::Overloaded
        | DbError::IsBootstrapping
        | DbError::ReadTimeout { .. }
        | DbError::WriteTimeout { .. }
        | DbError::ReadFailure { .. }
        | DbError::WriteFailure { .. }
        | DbError::TruncateError
        | DbError::ServerError
        | DbError::Unprepared { .. }
        | DbError::RateLimitReached { .. } => StoreError::Unavailable(text),
        DbError::Invalid | DbError::ConfigError if missing_schema(message) => {
            StoreError::Schema(text)
        }
        _ => StoreError::Rejected(text),
    }
}

impl IntoStoreError for RequestAttemptError {
    fn into_store(self) -> StoreError {
        match &self {
            RequestAttemptError::DbError(db, message) => from_db_error(db, message),
            RequestAttemptError::SerializationError(_)
            | RequestAttemptError::CqlRequestSerialization(_) => {
                StoreError::Rejected(self.to_string())
            }
            _ => StoreError::Unavailable(self.to_string()),
        }
    }
}

impl IntoStoreError for ExecutionError {
    fn into_store(self) -> StoreError {
        match self {
            ExecutionError::LastAttemptError(e) => e.into_store(),
            ExecutionError::PrepareError(e) => e.into_store(),
            ExecutionError::BadQuery(e) => StoreError::Rejected(e.to_string()),
            ExecutionError::UseKeyspaceError(e) => StoreError::Schema(e.to_string()),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

impl IntoStoreError for PrepareError {
    fn into_store(self) -> StoreError {
        match self {
            PrepareError::AllAttemptsFailed { first_attempt } => first_attempt.into_store(),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

impl IntoStoreError for NextPageError {
    fn into_store(self) -> StoreError {
        match self {
            NextPageError::RequestFailure(e) => e.into_execution_error().into_store(),
            NextPageError::TypeCheckError(e) => StoreError::Schema(e.to_string()),
            NextPageError::PartitionKeyError(e) => StoreError::Rejected(e.to_string()),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

impl IntoStoreError for PagerExecutionError {
    fn into_store(self) -> StoreError {
        match self {
            PagerExecutionError::PrepareError(e) => e.into_store(),
            PagerExecutionError::NextPageError(e) => e.into_store(),
            PagerExecutionError::SerializationError(e) => StoreError::Rejected(e.to_string()),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

impl IntoStoreError for NextRowError {
    fn into_store(self) -> StoreError {
        match self {
            NextRowError::NextPageError(e) => e.into_store(),
            other => StoreError::Schema(other.to_string()),
        }
    }
}

impl IntoStoreError for NewSessionError {
    fn into_store(self) -> StoreError {
        match self {
            NewSessionError::EmptyKnownNodesList | NewSessionError::IllegalConfig(_) => {
                StoreError::Rejected(self.to_string())
            }
            NewSessionError::UseKeyspaceError(e) => StoreError::Schema(e.to_string()),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

/// Rows that do not have the types this build expects: an outdated schema.
pub(super) fn shape<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Schema(format!("unexpected result shape: {e}"))
}

/// Stored JSON that does not parse: never retryable.
pub(super) fn corrupt<E: std::fmt::Display>(what: &str, e: E) -> StoreError {
    StoreError::Rejected(format!("stored {what} cannot be read: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn driver_errors_map_to_the_port() {
        use scylla::frame::types::Consistency as C;
        let unavailable = DbError::Unavailable {
            consistency: C::LocalQuorum,
            required: 2,
            alive: 1,
        };
        assert!(from_db_error(&unavailable, "").is_transient());
        assert!(from_db_error(&DbError::Overloaded, "").is_transient());
        assert!(matches!(
            from_db_error(&DbError::Invalid, "unconfigured table goals"),
            StoreError::Schema(_)
        ));
        assert!(matches!(
            from_db_error(&DbError::Invalid, "Keyspace tally does not exist"),
            StoreError::Schema(_)
        ));
        assert!(matches!(
            from_db_error(&DbError::Invalid, "Invalid STRING constant"),
            StoreError::Rejected(_)
        ));
        assert!(matches!(
            from_db_error(&DbError::SyntaxError, "line 1:0 no viable alternative"),
            StoreError::Rejected(_)
        ));
        let timeout = ExecutionError::RequestTimeout(Duration::from_secs(12));
        assert!(timeout.into_store().is_transient());
        let missing = ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            DbError::Invalid,
            "unconfigured table touchpoints".into(),
        ));
        assert!(matches!(missing.into_store(), StoreError::Schema(_)));
        let broken = ExecutionError::LastAttemptError(RequestAttemptError::UnableToAllocStreamId);
        assert!(broken.into_store().is_transient());
        assert!(ExecutionError::EmptyPlan.into_store().is_transient());
        assert!(matches!(
            NewSessionError::EmptyKnownNodesList.into_store(),
            StoreError::Rejected(_)
        ));
    }
}
