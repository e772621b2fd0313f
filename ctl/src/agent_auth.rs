//! The agents' local logins (`megaplan.codex_auth: chatgpt`): on `deploy` and `chain` the client
//! reads `~/.codex/auth.json` and `~/.hermes/auth.json` and hands them to the daemon in the
//! request body, like secret values. The daemon seeds them onto the runner; it never writes
//! them to its disk, database or log.

use megaplan_cloud_api::wire::AgentAuth;
use std::io::Read;
use std::path::Path;

/// Agent name → the login file under `$HOME`.
pub const FILES: [(&str, &str); 2] = [
    ("codex", ".codex/auth.json"),
    ("hermes", ".hermes/auth.json"),
];

/// A login file larger than this is not read (codex's is a few KiB): both files, JSON-escaped,
/// must fit the daemon's 1 MiB request limit.
pub const MAX_BYTES: u64 = 256 * 1024;

/// Read the login files under `home`. A file that is absent, unreadable, larger than
/// [`MAX_BYTES`] or not UTF-8 text is listed under `missing` with its path and why.
pub fn read(home: &Path) -> AgentAuth {
    let mut auth = AgentAuth::default();
    for (agent, rel) in FILES {
        let path = home.join(rel);
        match read_one(&path) {
            Ok(text) => {
                auth.files.insert(agent.to_string(), text);
            }
            Err(why) => {
                auth.missing
                    .insert(agent.to_string(), format!("{} {why}", path.display()));
            }
        }
    }
    auth
}

fn read_one(path: &Path) -> Result<String, String> {
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "not found".to_string(),
        _ => format!("cannot be read: {e}"),
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot be read: {e}"))?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(format!("is larger than {MAX_BYTES} bytes"));
    }
    if bytes.is_empty() {
        return Err("is empty".to_string());
    }
    String::from_utf8(bytes).map_err(|_| "is not UTF-8 text".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_present_files_and_names_missing_ones() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join(".codex")).unwrap();
        std::fs::write(home.path().join(".codex/auth.json"), "{\"a\": 1}\n").unwrap();
        std::fs::create_dir_all(home.path().join(".hermes")).unwrap();
        std::fs::write(home.path().join(".hermes/auth.json"), [0xff, 0xfe]).unwrap();
        let auth = read(home.path());
        assert_eq!(auth.files.get("codex").unwrap(), "{\"a\": 1}\n");
        assert!(!auth.files.contains_key("hermes"));
        assert!(auth.missing["hermes"].ends_with(".hermes/auth.json is not UTF-8 text"));
        let empty = tempfile::tempdir().unwrap();
        let none = read(empty.path());
        assert!(none.files.is_empty());
        assert!(none.missing["codex"].ends_with(".codex/auth.json not found"));
        assert!(none.missing["hermes"].ends_with(".hermes/auth.json not found"));
    }
}
