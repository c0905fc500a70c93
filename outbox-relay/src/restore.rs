//! Restore detection. After a logical restore (pg_dump into a new cluster) the
//! stored txids can be ahead of the new cluster's counter: new events would sort
//! below the checkpoint and be skipped forever. The relay refuses to publish
//! instead, and names the recovery command.

use sqlx::PgConnection;

use crate::checkpoint::StoredCheckpoint;

/// What the relay compares the checkpoint against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterState {
    pub system_identifier: i64,
    /// `pg_snapshot_xmax(pg_current_snapshot())`: the first txid not yet
    /// assigned. Used instead of `pg_current_xact_id()`, which would burn a txid
    /// on every check; "at or above xmax" is exactly "from the future".
    pub next_txid: i64,
    /// `max(event_log.txid)`, from the `(txid, position)` index.
    pub max_stored_txid: Option<i64>,
}

pub async fn cluster_state(conn: &mut PgConnection) -> Result<ClusterState, sqlx::Error> {
    let (system_identifier, next_txid, max_stored_txid) = sqlx::query_as(
        "select (select system_identifier from pg_control_system()),
                pg_snapshot_xmax(pg_current_snapshot())::text::bigint,
                (select max(txid) from event_log)::text::bigint",
    )
    .fetch_one(conn)
    .await?;
    Ok(ClusterState {
        system_identifier,
        next_txid,
        max_stored_txid,
    })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreDetected {
    #[error("the database cluster changed: checkpoint written on system identifier {stored}, this is {current}")]
    SystemIdentifierChanged { stored: i64, current: i64 },
    #[error("the checkpoint's txid {checkpoint} is ahead of this cluster's next txid {next}")]
    CheckpointAhead { checkpoint: i64, next: i64 },
    #[error("event_log holds txid {max_stored}, ahead of this cluster's next txid {next}")]
    StoredTxidAhead { max_stored: i64, next: i64 },
}

impl RestoreDetected {
    /// The full operator message: what is wrong and the command that fixes it.
    pub fn explain(&self, relay_name: &str) -> String {
        let fix = match self {
            Self::SystemIdentifierChanged { .. } => format!(
                "if this cluster's txids carried over (physical restore, pg_upgrade), run \
                 `outbox-relay reset-checkpoint --relay-name {relay_name} --adopt-cluster`; \
                 after a logical restore see docs/relay.md#recovery-after-a-restore"
            ),
            Self::CheckpointAhead { .. } => format!(
                "choose where to resume and run `outbox-relay reset-checkpoint --relay-name {relay_name} \
                 --to-start` (republish all; consumers dedupe on ce_id) or `--to TXID:POSITION`"
            ),
            Self::StoredTxidAhead { max_stored, .. } => format!(
                "move this cluster's txid epoch past the stored txids (stop Postgres, \
                 `pg_resetwal -e {} $PGDATA`, start it), then run \
                 `outbox-relay reset-checkpoint --relay-name {relay_name} --adopt-cluster`",
                (max_stored >> 32) + 1
            ),
        };
        format!("restore detected, refusing to publish: {self}. To recover: {fix}")
    }
}

/// `Err` if publishing from `stored` in this cluster could skip events.
pub fn check(
    state: &ClusterState,
    stored: Option<&StoredCheckpoint>,
) -> Result<(), RestoreDetected> {
    if let Some(stored) = stored {
        if let Some(sysid) = stored.system_identifier {
            if sysid != state.system_identifier {
                return Err(RestoreDetected::SystemIdentifierChanged {
                    stored: sysid,
                    current: state.system_identifier,
                });
            }
        }
        if stored.checkpoint.txid >= state.next_txid {
            return Err(RestoreDetected::CheckpointAhead {
                checkpoint: stored.checkpoint.txid,
                next: state.next_txid,
            });
        }
    }
    match state.max_stored_txid {
        Some(max_stored) if max_stored >= state.next_txid => {
            Err(RestoreDetected::StoredTxidAhead {
                max_stored,
                next: state.next_txid,
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Checkpoint;

    const STATE: ClusterState = ClusterState {
        system_identifier: 42,
        next_txid: 1_000,
        max_stored_txid: Some(990),
    };

    fn stored(txid: i64, sysid: Option<i64>) -> StoredCheckpoint {
        StoredCheckpoint {
            checkpoint: Checkpoint { txid, position: 5 },
            system_identifier: sysid,
        }
    }

    #[test]
    fn healthy_cluster_passes() {
        assert_eq!(check(&STATE, None), Ok(()));
        assert_eq!(check(&STATE, Some(&stored(999, Some(42)))), Ok(()));
        assert_eq!(check(&STATE, Some(&stored(10, None))), Ok(()));
    }

    #[test]
    fn each_sign_of_a_restore_is_refused() {
        assert!(matches!(
            check(&STATE, Some(&stored(10, Some(7)))),
            Err(RestoreDetected::SystemIdentifierChanged {
                stored: 7,
                current: 42
            })
        ));
        assert!(matches!(
            check(&STATE, Some(&stored(1_000, Some(42)))),
            Err(RestoreDetected::CheckpointAhead { .. })
        ));
        let ahead = ClusterState {
            max_stored_txid: Some(5_000_000_000),
            ..STATE
        };
        let err = check(&ahead, None).unwrap_err();
        assert!(
            err.explain("x").contains("pg_resetwal -e 2 "),
            "{}",
            err.explain("x")
        );
    }

    #[test]
    fn every_explanation_names_the_recovery_command() {
        for err in [
            RestoreDetected::SystemIdentifierChanged {
                stored: 1,
                current: 2,
            },
            RestoreDetected::CheckpointAhead {
                checkpoint: 9,
                next: 1,
            },
            RestoreDetected::StoredTxidAhead {
                max_stored: 9,
                next: 1,
            },
        ] {
            assert!(err
                .explain("main")
                .contains("outbox-relay reset-checkpoint --relay-name main"));
        }
    }
}
