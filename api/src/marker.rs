//! The last-chain marker: which remote chain a cloud.yaml launched last, where, and on which
//! provider. Read from either shape through [`crate::legacy::normalize_marker`] (the original
//! tool's and this project's older one) and written in the original's; fields this version
//! does not name are kept as they are in `extra`. A field is kept absent, `null` or set exactly
//! as read ([`Slot`]), so a marker re-serializes unchanged (keys sorted, as stored in SQLite
//! and in `last_chain.json`).

use serde::de::Deserializer;
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A field that is absent, present as `null`, or set; written back the way it was read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Slot<T> {
    #[default]
    Absent,
    Null,
    Set(T),
}

impl<T> Slot<T> {
    pub fn get(&self) -> Option<&T> {
        match self {
            Slot::Set(t) => Some(t),
            _ => None,
        }
    }

    pub fn is_absent(&self) -> bool {
        matches!(self, Slot::Absent)
    }

    /// `Set` for `Some`, `Null` for `None`.
    pub fn from_option(o: Option<T>) -> Slot<T> {
        o.map(Slot::Set).unwrap_or(Slot::Null)
    }
}

impl Slot<String> {
    pub fn as_deref(&self) -> Option<&str> {
        self.get().map(String::as_str)
    }
}

impl<T: Serialize> Serialize for Slot<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Slot::Set(t) => t.serialize(s),
            _ => s.serialize_none(),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Slot<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Slot::from_option(Option::<T>::deserialize(d)?))
    }
}

/// `<state root>/markers/<key>/last_chain.json` and its SQLite row. Fields in sorted order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LastChainMarker {
    #[serde(default, skip_serializing_if = "Slot::is_absent")]
    pub base_branch: Slot<String>,
    #[serde(default, skip_serializing_if = "Slot::is_absent")]
    pub chain_log: Slot<String>,
    #[serde(default, skip_serializing_if = "Slot::is_absent")]
    pub chain_session: Slot<String>,
    /// A list of `{url, branch, workspace}` (the original's shape).
    #[serde(default, skip_serializing_if = "Slot::is_absent")]
    pub extra_repos: Slot<Value>,
    /// Ours: the launch identity digest the session marker on the runner carries.
    #[serde(default, skip_serializing_if = "Slot::is_absent")]
    pub identity_digest: Slot<String>,
    /// Ours: `restart` or `advance` when the supervisor launched it.
    #[serde(default, skip_serializing_if = "Slot::is_absent")]
    pub last_supervisor_action: Slot<String>,
    #[serde(default, skip_serializing_if = "Slot::is_absent")]
    pub provenance: Slot<Value>,
    #[serde(default, skip_serializing_if = "Slot::is_absent")]
    pub provider: Slot<String>,
    /// The railway service, the compose project or the ssh host (the original's string).
    #[serde(default, skip_serializing_if = "Slot::is_absent")]
    pub provider_identity: Slot<String>,
    /// Ours: `{service, project, environment}` of a railway target.
    #[serde(default, skip_serializing_if = "Slot::is_absent")]
    pub provider_target: Slot<Value>,
    #[serde(default, skip_serializing_if = "Slot::is_absent")]
    pub remote_spec: Slot<String>,
    /// RFC 3339 (the original writes `datetime.now(timezone.utc).isoformat()`).
    #[serde(default, skip_serializing_if = "Slot::is_absent")]
    pub started_at: Slot<String>,
    #[serde(default, skip_serializing_if = "Slot::is_absent")]
    pub workspace: Slot<String>,
    /// Fields neither the original nor this version names, kept as they are.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl LastChainMarker {
    /// Read a marker object in either shape (normalized first; see [`crate::legacy`]).
    pub fn read(v: Value) -> LastChainMarker {
        let normalized = crate::legacy::normalize_marker(v).marker;
        match serde_json::from_value::<LastChainMarker>(normalized.clone()) {
            Ok(m) => m,
            // Normalization leaves every named field of the right type, so this only keeps a
            // value that is not an object at all.
            Err(_) => LastChainMarker {
                extra: normalized.as_object().cloned().unwrap_or_default(),
                ..LastChainMarker::default()
            },
        }
    }

    /// The JSON object, keys sorted: the form stored and written to `last_chain.json`.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|_| Value::Object(Map::new()))
    }

    pub fn remote_spec(&self) -> Option<&str> {
        self.remote_spec.as_deref()
    }

    /// Does this marker describe the chain of `spec`?
    pub fn describes(&self, spec: &str) -> bool {
        self.remote_spec() == Some(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn markers_re_serialize_byte_for_byte() {
        // What `chain` stored before the marker was typed (a railway launch), and what the
        // original writes, with a field neither names.
        let ours = r#"{"base_branch":"main","chain_log":"/workspace/app/.megaplan/cloud-chain.log","chain_session":"megaplan-chain","extra_repos":[],"identity_digest":null,"provider":"railway","provider_identity":"agent","provider_target":{"environment":null,"project":"p1","service":"agent"},"remote_spec":"/workspace/app/chain.yaml","started_at":"2026-12-01T10:00:00.123+00:00","workspace":"/workspace/app"}"#;
        let python = r#"{"base_branch":"main","chain_log":null,"chain_session":"megaplan-chain","extra_repos":[{"branch":"main","url":"https://x/lib.git","workspace":"/workspace/lib"}],"provenance":{"success":true},"provider":"ssh","provider_identity":null,"remote_spec":"/w/chain.yaml","started_at":"2026-11-30T10:00:00.123456+00:00","workspace":"/w","zz_future":[1,2]}"#;
        for text in [ours, python] {
            let m = LastChainMarker::read(serde_json::from_str(text).unwrap());
            assert_eq!(serde_json::to_string(&m.to_value()).unwrap(), text);
        }
        let m = LastChainMarker::read(serde_json::from_str(python).unwrap());
        assert_eq!(m.chain_log, Slot::Null);
        assert_eq!(m.provider_identity, Slot::Null);
        assert_eq!(m.identity_digest, Slot::Absent);
        assert_eq!(m.extra["zz_future"], json!([1, 2]));
        assert!(m.describes("/w/chain.yaml"));
    }

    #[test]
    fn our_older_shape_reads_into_the_originals() {
        let m = LastChainMarker::read(json!({
            "remote_spec": "/w/chain.yaml",
            "provider_identity": {"service": "agent", "project": "p1", "environment": null},
            "started_at": 12,
        }));
        assert_eq!(m.provider_identity.as_deref(), Some("agent"));
        assert_eq!(m.provider_target.get().unwrap()["project"], "p1");
        assert_eq!(m.started_at, Slot::Null, "a number is read as null");
    }
}
