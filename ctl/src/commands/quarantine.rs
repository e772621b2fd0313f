//! `megaplan-cloudctl unquarantine [KEY|PATH]`: clear a registration's crash-loop quarantine
//! (the supervisor stopped restarting a driver that died right after each restart).

use crate::output;
use hyper::Method;
use megaplan_cloud_api::liveness::UnquarantineResult;
use megaplan_cloud_api::routes;
use megaplan_cloudctl::client::{ClientError, DaemonClient};

/// What a person reads after the request.
pub fn render(r: &UnquarantineResult, cloud_yaml: &str) -> String {
    if r.cleared {
        format!(
            "unquarantined {cloud_yaml}: the supervisor may restart its driver again (the restart count starts over)"
        )
    } else {
        format!("{cloud_yaml} was not quarantined")
    }
}

pub async fn unquarantine(
    client: &DaemonClient,
    key: &str,
    cloud_yaml: &str,
) -> Result<i32, ClientError> {
    let path = routes::cloud_quarantine(key);
    let v = client.json(Method::DELETE, &path, None).await?;
    if output::json_mode() {
        output::print_json_doc(&v);
    }
    let r: UnquarantineResult = serde_json::from_value(v).unwrap_or(UnquarantineResult {
        key: key.to_string(),
        cleared: true,
    });
    output::say(&render(&r, cloud_yaml));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_whether_a_quarantine_was_cleared() {
        let r = |cleared| UnquarantineResult {
            key: "k".into(),
            cleared,
        };
        assert!(render(&r(true), "/p/cloud.yaml").starts_with("unquarantined /p/cloud.yaml"));
        assert_eq!(
            render(&r(false), "/p/cloud.yaml"),
            "/p/cloud.yaml was not quarantined"
        );
    }
}
