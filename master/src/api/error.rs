//! Where internal errors become wire errors.
//!
//! The store, posting and ingest speak [`StoreError`]; only the API
//! answers callers, so only here does a store error get its [`ErrorCode`]
//! (which `musterctl` maps to an exit code) and the hint that tells an
//! operator what to run next.

use muster_shared::api::{ApiError, ErrorCode};

use crate::store::{Missing, StoreError};

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(Missing::Target(t)) => ApiError::not_enlisted(&t),
            StoreError::NotFound(Missing::Job(j)) => {
                ApiError::new(ErrorCode::NotFound, format!("no job is named '{j}' (see `musterctl job list`)"))
            }
            StoreError::NotFound(Missing::Group(g)) => {
                ApiError::new(ErrorCode::NotFound, format!("no group is named '{g}' (see `musterctl group list`)"))
            }
            StoreError::Conflict { .. } => ApiError::new(ErrorCode::Conflict, e),
            StoreError::Corrupt { record: Some(record), source, .. } => {
                let (what, remove) = match &record {
                    Missing::Job(j) => (format!("job '{j}'"), format!("musterctl job delete {j}")),
                    Missing::Group(g) => (format!("group '{g}'"), format!("musterctl group delete {g}")),
                    Missing::Target(t) => (format!("target '{t}'"), format!("musterctl target defect {t} --force")),
                };
                ApiError::internal(format!("{what} cannot be read: its record is corrupt ({source}); `{remove}` removes it"))
            }
            StoreError::Corrupt { record: None, .. } | StoreError::Nats { .. } => ApiError::internal(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_shared::name::{GroupName, JobName, TargetName};

    #[test]
    fn store_errors_get_their_codes_and_hints() {
        let not_enlisted = ApiError::from(StoreError::NotFound(Missing::Target(TargetName::new("web01").unwrap())));
        assert_eq!(not_enlisted, ApiError::not_enlisted(&TargetName::new("web01").unwrap()));
        let job = ApiError::from(StoreError::NotFound(Missing::Job(JobName::new("backup").unwrap())));
        assert_eq!(
            (job.code, job.message.as_str()),
            (ErrorCode::NotFound, "no job is named 'backup' (see `musterctl job list`)")
        );
        let group = ApiError::from(StoreError::NotFound(Missing::Group(GroupName::new("web").unwrap())));
        assert_eq!(group.code, ErrorCode::NotFound);
        assert!(group.message.contains("musterctl group list"), "{}", group.message);
        let conflict = ApiError::from(StoreError::Conflict { key: "backup".into() });
        assert_eq!(
            (conflict.code, conflict.message.as_str()),
            (ErrorCode::Conflict, "'backup' kept changing under us; try again")
        );
        let corrupt = serde_json::from_str::<u8>("x").unwrap_err();
        let internal = ApiError::from(StoreError::Corrupt { key: "k".into(), record: None, source: corrupt });
        assert_eq!(internal.code, ErrorCode::Internal);
        assert!(internal.message.starts_with("record 'k' is corrupt: "), "{}", internal.message);
        let corrupt = serde_json::from_str::<u8>("x").unwrap_err();
        let named = StoreError::Corrupt { key: "backup".into(), record: None, source: corrupt }
            .about(Missing::Job(JobName::new("backup").unwrap()));
        let job = ApiError::from(named);
        assert!(job.message.starts_with("job 'backup' cannot be read: its record is corrupt ("), "{}", job.message);
        assert!(job.message.ends_with("`musterctl job delete backup` removes it"), "{}", job.message);
    }
}
