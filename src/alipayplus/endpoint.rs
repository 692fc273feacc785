//! Where calls go and whom the client trusts: the endpoint URL built from `alipayplus.base_url`
//! (https only unless allowed, no credentials, query or fragment) and the extra certificates of
//! `alipayplus.ca_bundle_file`. Both are checked once, when the client is built.

use std::path::Path;

use super::options::ClientBuildError;
use super::request::NOTIFY_REGISTRATION_STATUS_PATH;

/// The certificates of a PEM bundle; a file without any is refused rather than trusting nothing new.
pub(super) fn ca_bundle(path: &Path) -> Result<Vec<reqwest::Certificate>, ClientBuildError> {
    let pem = std::fs::read(path)
        .map_err(|e| ClientBuildError::CaBundle(format!("cannot read {}: {e}", path.display())))?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
        ClientBuildError::CaBundle(format!("{} is not a PEM bundle: {e}", path.display()))
    })?;
    if certificates.is_empty() {
        return Err(ClientBuildError::CaBundle(format!(
            "{} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certificates)
}

/// `<base_url>/aps/api/v1/merchants/notifyRegistrationStatus`, refusing `http://` unless allowed.
pub(super) fn endpoint_url(
    base_url: &str,
    allow_insecure_http: bool,
) -> Result<reqwest::Url, ClientBuildError> {
    let base =
        reqwest::Url::parse(base_url).map_err(|e| ClientBuildError::BaseUrl(e.to_string()))?;
    match base.scheme() {
        "https" => {}
        "http" if allow_insecure_http => {}
        "http" => return Err(ClientBuildError::InsecureHttp),
        other => {
            return Err(ClientBuildError::BaseUrl(format!(
                "unsupported scheme {other:?}, expected https"
            )));
        }
    }
    if base.host_str().is_none_or(str::is_empty) {
        return Err(ClientBuildError::BaseUrl("has no host".into()));
    }
    if base.query().is_some() || base.fragment().is_some() || !base.username().is_empty() {
        return Err(ClientBuildError::BaseUrl(
            "must not carry credentials, a query or a fragment".into(),
        ));
    }
    let joined = format!(
        "{}{}",
        base.as_str().trim_end_matches('/'),
        NOTIFY_REGISTRATION_STATUS_PATH
    );
    reqwest::Url::parse(&joined).map_err(|e| ClientBuildError::BaseUrl(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn endpoint_joins_the_path_and_keeps_a_base_prefix() {
        let url = endpoint_url("https://open-sea-global.alipayplus.com", false).unwrap();
        assert_eq!(
            url.as_str(),
            "https://open-sea-global.alipayplus.com/aps/api/v1/merchants/notifyRegistrationStatus"
        );
        let url = endpoint_url("http://127.0.0.1:9/gw/", true).unwrap();
        assert_eq!(
            url.path(),
            "/gw/aps/api/v1/merchants/notifyRegistrationStatus"
        );
    }

    #[test]
    fn endpoint_refuses_insecure_and_odd_urls() {
        assert!(matches!(
            endpoint_url("http://example.com", false),
            Err(ClientBuildError::InsecureHttp)
        ));
        for bad in ["ftp://x", "not a url", "https://u:p@x", "https://x/?q=1"] {
            assert!(
                matches!(endpoint_url(bad, true), Err(ClientBuildError::BaseUrl(_))),
                "{bad}"
            );
        }
    }
}
