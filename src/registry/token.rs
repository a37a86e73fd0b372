//! The parts of Docker's token protocol that oci-client does not cover: checking a user name
//! and password at login, and exchanging an identity (refresh) token for a pull token.

use std::collections::HashMap;

use reqwest::StatusCode;

use super::error::Context;
use super::transport::Endpoint;
use super::RegistryError;

/// A `WWW-Authenticate` challenge: its scheme and parameters.
#[derive(Debug, PartialEq, Eq)]
struct Challenge {
    scheme: String,
    params: HashMap<String, String>,
}

/// Parses `Bearer realm="https://auth/token",service="registry",scope="a,b"` (quoted values
/// may hold commas).
fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"')?;
                (&quoted[..end], &quoted[end + 1..])
            }
            None => after.split_once(',').unwrap_or((after, "")),
        };
        params.insert(key.trim().to_ascii_lowercase(), value.to_string());
        rest = after.trim_start_matches([',', ' ']);
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

/// `GET /v2/` without credentials: `None` when the registry lets anyone in.
async fn ping(endpoint: &Endpoint, ctx: &Context) -> Result<Option<Challenge>, RegistryError> {
    let res = endpoint
        .http
        .get(endpoint.url("/v2/"))
        .send()
        .await
        .map_err(|e| ctx.transport_error(&e))?;
    if res.status() != StatusCode::UNAUTHORIZED {
        return Ok(None);
    }
    Ok(res
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|h| h.to_str().ok())
        .and_then(parse_challenge))
}

/// Checks a user name and password against the registry, the way `docker login` does.
pub(crate) async fn verify_login(
    endpoint: &Endpoint,
    username: &str,
    password: &str,
    ctx: &Context,
) -> Result<(), RegistryError> {
    let fail = |detail: String| RegistryError::Login {
        registry: ctx.registry.clone(),
        detail,
    };
    let Some(challenge) = ping(endpoint, ctx).await? else {
        return Ok(());
    };
    let request = match (challenge.scheme.as_str(), challenge.params.get("realm")) {
        ("bearer", Some(realm)) => {
            let mut query = vec![("account", username)];
            if let Some(service) = challenge.params.get("service") {
                query.push(("service", service));
            }
            endpoint.http.get(realm).query(&query)
        }
        _ => endpoint.http.get(endpoint.url("/v2/")),
    };
    let res = request
        .basic_auth(username, Some(password))
        .send()
        .await
        .map_err(|e| ctx.transport_error(&e))?;
    match res.status() {
        s if s.is_success() => Ok(()),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(fail(format!(
            "{} refused the user name or password",
            endpoint.host
        ))),
        s => Err(fail(format!(
            "{} answered HTTP {}",
            endpoint.host,
            s.as_u16()
        ))),
    }
}

/// Exchanges an identity token (an OAuth2 refresh token stored by `docker login`) for an
/// access token to pull from `repository`.
pub(crate) async fn exchange_identity_token(
    endpoint: &Endpoint,
    refresh_token: &str,
    repository: &str,
    ctx: &Context,
) -> Result<String, RegistryError> {
    let fail = |detail: &str| RegistryError::Credentials {
        host: endpoint.host.clone(),
        detail: format!(
            "identity token: {detail}; run `eskrun login {}` again",
            ctx.registry
        ),
    };
    let challenge = ping(endpoint, ctx).await?;
    let Some(realm) = challenge
        .as_ref()
        .filter(|c| c.scheme == "bearer")
        .and_then(|c| c.params.get("realm"))
    else {
        return Err(fail("the registry does not use token authentication"));
    };
    let scope = format!("repository:{repository}:pull");
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("client_id", "eskrun"),
        ("refresh_token", refresh_token),
        ("scope", scope.as_str()),
    ];
    if let Some(service) = challenge.as_ref().and_then(|c| c.params.get("service")) {
        form.push(("service", service));
    }
    // reqwest's form feature is not enabled; a URL's query serialiser encodes the same way.
    let mut encoder = reqwest::Url::parse("http://form.invalid/").expect("static URL");
    encoder.query_pairs_mut().extend_pairs(&form);
    let res = endpoint
        .http
        .post(realm)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(encoder.query().unwrap_or_default().to_string())
        .send()
        .await
        .map_err(|e| ctx.transport_error(&e))?;
    if !res.status().is_success() {
        return Err(fail(&format!(
            "the token server answered HTTP {}",
            res.status().as_u16()
        )));
    }
    let body: serde_json::Value = res
        .json()
        .await
        .map_err(|_| fail("the token server's answer is not JSON"))?;
    ["access_token", "token"]
        .iter()
        .find_map(|k| body.get(k).and_then(|v| v.as_str()))
        .map(str::to_string)
        .ok_or_else(|| fail("the token server's answer holds no token"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_and_basic_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.example/token");
        assert_eq!(c.params["service"], "registry.example");
        assert_eq!(c.params["scope"], "repository:a/b:pull,push");

        let c = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.params["realm"], "Registry Realm");
    }
}
