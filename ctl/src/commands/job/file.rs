//! Job files: what `job create -f`, `job update -f` and `job apply -f`
//! read, from a path or from standard input (`-f -`).
//!
//! Why two shapes: configuration kept as code is usually a job spec
//! written by hand, but `musterctl job show X --json | edit | musterctl
//! job apply -f -` must work too, so the whole `job show --json` document
//! is accepted unchanged. Its `spec` is the job; its `targets` and
//! `groups` say where the job runs (`job apply` converges to them); `id`,
//! `revision` and the times are the master's and are not read.

use std::io::Read as _;
use std::path::Path;

use muster_shared::job::JobSpec;
use muster_shared::name::{GroupName, TargetName};
use serde::Deserialize;

use crate::exit::Failure;

/// A job file, read and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFile {
    pub spec: JobSpec,
    /// Where the job runs, when the file says (a `job show --json` document).
    pub reach: Option<Reach>,
}

/// The targets and groups a `job show --json` document lists.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Reach {
    #[serde(default)]
    pub targets: Vec<TargetName>,
    #[serde(default)]
    pub groups: Vec<GroupName>,
}

/// Reads `path` (`-` for standard input).
///
/// # Errors
/// Exit 4, naming the file and what is wrong in it.
pub fn read(path: &Path) -> Result<JobFile, Failure> {
    let (label, text) = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(|e| Failure::invalid(format!("reading standard input: {e}")))?;
        ("standard input".to_owned(), text)
    } else {
        let text = std::fs::read_to_string(path).map_err(|e| Failure::invalid(format!("reading {}: {e}", path.display())))?;
        (path.display().to_string(), text)
    };
    parse(&text).map_err(|e| Failure::invalid(format!("{label}: {e}")))
}

/// A job spec, or a `job show --json` document (it has a `spec` object).
fn parse(text: &str) -> Result<JobFile, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    match value.get("spec") {
        Some(spec) if spec.is_object() => {
            let spec = JobSpec::from_json(&spec.to_string()).map_err(|e| format!("spec: {e}"))?;
            let reach = Reach::deserialize(&value).map_err(|e| format!("targets or groups: {e}"))?;
            Ok(JobFile { spec, reach: Some(reach) })
        }
        _ => Ok(JobFile { spec: JobSpec::from_json(text).map_err(|e| e.to_string())?, reach: None }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"{"name": "backup", "steps": [{"command": "true"}]}"#;

    #[test]
    fn a_spec_reads_as_itself() {
        let f = parse(SPEC).unwrap();
        assert_eq!(f.spec.name.as_str(), "backup");
        assert_eq!(f.reach, None);
    }

    #[test]
    fn job_show_json_reads_unchanged_with_where_the_job_runs() {
        let shown = format!(
            r#"{{"id": "0190f0a0-0000-7000-8000-000000000000", "revision": 3, "spec": {SPEC},
                "targets": ["web01"], "groups": ["db"],
                "created_at": "2026-12-01T00:00:00Z", "updated_at": "2026-12-01T00:00:00Z"}}"#
        );
        let f = parse(&shown).unwrap();
        assert_eq!(f.spec, parse(SPEC).unwrap().spec);
        let reach = f.reach.unwrap();
        assert_eq!(reach.targets, [TargetName::new("web01").unwrap()]);
        assert_eq!(reach.groups, [GroupName::new("db").unwrap()]);
    }

    #[test]
    fn mistakes_are_named() {
        assert!(parse("{").unwrap_err().contains("not JSON"));
        let e = parse(r#"{"spec": {"name": "x", "steps": [], "bogus": 1}}"#).unwrap_err();
        assert!(e.starts_with("spec: "), "{e}");
        let e = parse(r#"{"spec": {"name": "x", "steps": [{"command": "true"}]}, "targets": ["no.dots"]}"#).unwrap_err();
        assert!(e.starts_with("targets or groups"), "{e}");
    }
}
