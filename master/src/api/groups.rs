//! Target groups: create, delete, list, add and remove members.
//!
//! A job assigned to a group reaches its members, so changing members posts
//! the group's jobs to targets that now reach them and deletes to targets
//! that no longer do. A group still assigned to a job cannot be deleted.

use std::collections::{BTreeSet, HashMap};

use chrono::Utc;
use muster_shared::api::{ApiError, CorruptRecord, ErrorCode, GroupInfo, GroupMembers, GroupRef, Listed};
use muster_shared::name::{GroupName, TargetName};

use super::desired::changes;
use super::jobs::reach_changes;
use super::Ctx;
use crate::publish::Post;
use crate::store::{GroupRecord, JobRecord, Missing, Store, StoreError};

impl Ctx {
    pub(super) async fn group_create(&self, req: GroupRef) -> Result<GroupInfo, ApiError> {
        let record = GroupRecord { name: req.group.clone(), members: BTreeSet::new(), created_at: Utc::now() };
        let created = Store::try_modify(&self.store.groups, req.group.as_str(), |old: Option<GroupRecord>| match old {
            Some(_) => Err(ApiError::new(ErrorCode::AlreadyExists, format!("a group named '{}' already exists", req.group))),
            None => Ok(Some(record.clone())),
        })
        .await?
        .expect("written");
        Ok(group_info(&created, &[]))
    }

    /// Deletes an empty-handed group: one that no job is assigned to.
    /// A record that cannot be read (corrupt) has no members anyone gets
    /// jobs through; it is deleted under the same rule.
    pub(super) async fn group_delete(&self, req: GroupRef) -> Result<Listed<GroupInfo>, ApiError> {
        let group = match self.store.group(&req.group).await {
            Ok(g) => Ok(g),
            Err(StoreError::Corrupt { key, source, .. }) => Err(CorruptRecord { key, corrupt: source.to_string() }),
            Err(e) => return Err(e.into()),
        };
        let jobs = self.store.all_jobs().await?;
        let users: Vec<String> = jobs.iter().filter(|j| j.groups.contains(&req.group)).map(|j| j.spec.name.to_string()).collect();
        if let Some(first) = users.first() {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "group '{g}' is assigned to job(s) {}; unassign them first (`musterctl job unassign {first} --group {g}`)",
                    users.join(", "),
                    g = req.group
                ),
            ));
        }
        Store::delete(&self.store.groups, req.group.as_str()).await?;
        Ok(match group {
            Ok(g) => Listed::Ok(group_info(&g, &jobs)),
            Err(corrupt) => {
                tracing::warn!(group = %req.group, error = corrupt.corrupt, "corrupt group record deleted");
                Listed::Corrupt(corrupt)
            }
        })
    }

    /// Every group in name order, a record that cannot be read included (as
    /// corrupt).
    pub(super) async fn group_list(&self) -> Result<Vec<Listed<GroupInfo>>, ApiError> {
        let (jobs, mut groups) =
            tokio::try_join!(self.store.all_jobs(), Store::scan_all_checked::<GroupRecord>(&self.store.groups))?;
        groups.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(groups
            .into_iter()
            .map(|(key, record)| match record {
                Ok(g) => Listed::Ok(group_info(&g, &jobs)),
                Err(corrupt) => Listed::Corrupt(CorruptRecord { key, corrupt }),
            })
            .collect())
    }

    /// Adds or removes members, then posts the group's jobs to targets that
    /// now reach them and deletes to targets that no longer do (a target
    /// that still reaches a job directly or through another group keeps it).
    pub(super) async fn group_members(&self, req: GroupMembers, add: bool) -> Result<GroupInfo, ApiError> {
        if req.targets.is_empty() {
            return Err(ApiError::new(ErrorCode::InvalidRequest, "name at least one target"));
        }
        if add {
            self.store.require_enlisted(&req.targets).await?;
        }
        self.store.group(&req.group).await?;
        let before = self.store.all_groups().await?;
        let updated = Store::try_modify(&self.store.groups, req.group.as_str(), |old: Option<GroupRecord>| {
            let Some(mut g) = old else {
                return Err(ApiError::new(ErrorCode::NotFound, format!("no group is named '{}'", req.group)));
            };
            for t in &req.targets {
                if add {
                    g.members.insert(t.clone())
                } else {
                    g.members.remove(t)
                };
            }
            Ok(Some(g))
        })
        .await?
        .expect("written");
        let mut after = before.clone();
        after.insert(updated.name.clone(), updated.clone());
        let jobs = self.store.all_jobs().await?;
        let items = jobs
            .iter()
            .filter(|j| j.groups.contains(&req.group))
            .flat_map(|j| reach_changes(j, &Store::concerned(j, &before), &Store::concerned(j, &after)))
            .collect();
        let posted = changes(items);
        self.publish_posted(&posted, |_| Post::default()).await;
        Ok(group_info(&updated, &jobs))
    }
}

/// The members of the named groups.
///
/// # Errors
/// `not_found` for a group that does not exist.
pub(super) fn expand_groups(
    names: &[GroupName],
    groups: &HashMap<GroupName, GroupRecord>,
) -> Result<BTreeSet<TargetName>, ApiError> {
    let mut out = BTreeSet::new();
    for g in names {
        let group = groups.get(g).ok_or_else(|| StoreError::NotFound(Missing::Group(g.clone())))?;
        out.extend(group.members.iter().cloned());
    }
    Ok(out)
}

fn group_info(g: &GroupRecord, jobs: &[JobRecord]) -> GroupInfo {
    GroupInfo {
        name: g.name.clone(),
        members: g.members.iter().cloned().collect(),
        jobs: jobs.iter().filter(|j| j.groups.contains(&g.name)).map(|j| j.spec.name.clone()).collect(),
        created_at: g.created_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> BTreeSet<TargetName> {
        list.iter().map(|n| TargetName::new(*n).unwrap()).collect()
    }

    #[test]
    fn expand_groups_names_a_missing_group() {
        let g = GroupName::new("web").unwrap();
        let mut groups = HashMap::new();
        groups.insert(g.clone(), GroupRecord { name: g.clone(), members: names(&["a", "b"]), created_at: Utc::now() });
        assert_eq!(expand_groups(&[g], &groups).unwrap(), names(&["a", "b"]));
        let err = expand_groups(&[GroupName::new("db").unwrap()], &groups).unwrap_err();
        assert_eq!(err.code, ErrorCode::NotFound);
        assert!(err.message.contains("musterctl group list"), "{}", err.message);
    }
}
