//! Throw-away TLS material for loopback servers in tests: a CA and a server certificate it
//! signed (EC P-256, two days), made with the `openssl` command line tool.

use crate::util::run_ok;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Files written by [`server_cert`] into one folder.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA certificate (PEM): what a client trusts, e.g. through `SSL_CERT_FILE`.
    pub ca: PathBuf,
    /// The server certificate (PEM), signed by `ca`.
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
}

/// A new CA named `ca_name` and a server certificate for `san` (an OpenSSL subjectAltName
/// value such as `IP:127.0.0.1` or `DNS:backboard.railway.com`) under `dir`.
pub fn server_cert(dir: &Path, ca_name: &str, common_name: &str, san: &str) -> TlsFiles {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let ossl = |args: &[&str]| {
        run_ok(Command::new("openssl").args(args).current_dir(dir))
            .unwrap_or_else(|e| panic!("openssl {args:?}: {e}"));
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ca_subject = format!("/CN={ca_name}");
    let mut a = vec!["req", "-x509", "-days", "2", "-subj", &ca_subject];
    a.extend(ec);
    a.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    ossl(&a);
    let subject = format!("/CN={common_name}");
    let mut a = vec!["req", "-new", "-subj", &subject];
    a.extend(ec);
    a.extend(["-keyout", "server.key", "-out", "server.csr"]);
    ossl(&a);
    std::fs::write(
        dir.join("ext.cnf"),
        format!("subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"),
    )
    .expect("write ext.cnf");
    ossl(&[
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.pem",
    ]);
    TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    }
}
