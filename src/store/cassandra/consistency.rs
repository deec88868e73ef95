//! The consistency settings: `CASSANDRA_CONSISTENCY` parsed, refused when
//! reads could miss tally's own writes, and the serial consistency that
//! goes with it. Checked once, at connect.

use scylla::statement::{Consistency, SerialConsistency};

use crate::store::StoreError;

/// Parses `CASSANDRA_CONSISTENCY`.
pub fn parse_consistency(s: &str) -> Result<Consistency, StoreError> {
    Ok(
        match s.trim().to_ascii_uppercase().replace('-', "_").as_str() {
            "ANY" => Consistency::Any,
            "ONE" => Consistency::One,
            "TWO" => Consistency::Two,
            "THREE" => Consistency::Three,
            "QUORUM" => Consistency::Quorum,
            "ALL" => Consistency::All,
            "LOCAL_QUORUM" => Consistency::LocalQuorum,
            "EACH_QUORUM" => Consistency::EachQuorum,
            "LOCAL_ONE" => Consistency::LocalOne,
            other => {
                return Err(StoreError::Rejected(format!(
                    "CASSANDRA_CONSISTENCY `{other}` is not one of ONE, TWO, THREE, QUORUM, ALL, \
                 LOCAL_QUORUM, EACH_QUORUM, LOCAL_ONE, ANY"
                )))
            }
        },
    )
}

/// Refuses a consistency level at which a read may miss this process's
/// own completed write with `rf` replicas (R + W <= RF, reads and writes
/// at the same level): the earliest-wins settle in `batch.rs` relies on
/// reading its own writes. `ANY` is refused outright: a write acknowledged
/// as a hint is readable nowhere.
pub fn check_read_your_writes(c: Consistency, rf: u32) -> Result<(), StoreError> {
    let replicas = match c {
        Consistency::Any => 0,
        Consistency::One | Consistency::LocalOne => 1,
        Consistency::Two => 2,
        Consistency::Three => 3,
        // A majority both ways always overlaps.
        _ => return Ok(()),
    };
    if 2 * replicas > rf {
        return Ok(());
    }
    Err(StoreError::Rejected(format!(
        "CASSANDRA_CONSISTENCY {c:?} with CASSANDRA_REPLICATION_FACTOR {rf}: reads could miss \
         tally's own writes (reads and writes must overlap: 2 x replicas > RF); use \
         LOCAL_QUORUM"
    )))
}

/// Serial consistency for claims: local Paxos unless the configured
/// consistency already spans data centres.
pub fn serial_for(c: Consistency) -> SerialConsistency {
    match c {
        Consistency::Quorum | Consistency::All | Consistency::EachQuorum => {
            SerialConsistency::Serial
        }
        _ => SerialConsistency::LocalSerial,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistency_is_parsed_and_checked() {
        assert_eq!(
            parse_consistency("local_quorum").unwrap(),
            Consistency::LocalQuorum
        );
        assert_eq!(parse_consistency("ONE").unwrap(), Consistency::One);
        for (c, rf, ok) in [
            (Consistency::One, 1, true),
            (Consistency::One, 3, false),
            (Consistency::LocalOne, 2, false),
            (Consistency::Two, 3, true),
            (Consistency::Two, 4, false),
            (Consistency::Three, 5, true),
            (Consistency::LocalQuorum, 5, true),
            (Consistency::All, 3, true),
            (Consistency::Any, 1, false),
        ] {
            assert_eq!(check_read_your_writes(c, rf).is_ok(), ok, "{c:?} rf {rf}");
        }
        assert!(matches!(
            check_read_your_writes(Consistency::One, 3),
            Err(StoreError::Rejected(m)) if m.contains("LOCAL_QUORUM")
        ));
        assert!(
            matches!(parse_consistency("MOST"), Err(StoreError::Rejected(m)) if m.contains("CASSANDRA_CONSISTENCY"))
        );
        assert_eq!(
            serial_for(Consistency::LocalQuorum),
            SerialConsistency::LocalSerial
        );
        assert_eq!(serial_for(Consistency::Quorum), SerialConsistency::Serial);
    }
}
