//! A small Confluent Schema Registry client: fetches writer schemas by id (cached) and registers
//! the schemas we write with (id cached per subject).
//!
//! It separates "the registry says this id does not exist" (a property of the record, permanent)
//! from every other failure (unreachable, timeouts, 5xx, credentials, garbage answers), which are
//! the registry's or our set-up's fault and must be retried, never dead-lettered.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use apache_avro::Schema;
use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::schemas::fingerprint;

/// Most writer schemas kept in memory; far above the number of versions a topic ever has, and a
/// bound against a stream of records naming ever-new ids.
const MAX_CACHED_SCHEMAS: usize = 1024;
/// Largest registry answer read; a schema is a few KiB.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Confluent's error code for "schema not found" (alongside HTTP 404).
const SCHEMA_NOT_FOUND: i64 = 40403;
const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Why the registry could not give us what we asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The registry answered 404 / 40403 for a schema id.
    #[error("schema id {0} is unknown to the schema registry")]
    UnknownSchemaId(u32),
    /// The schema exists but is not a usable Avro schema (another type, unresolved references).
    #[error("schema id {schema_id} is not a usable avro schema: {reason}")]
    UnusableSchema { schema_id: u32, reason: String },
    /// The registry refused to register a schema (e.g. 409 incompatible, 422 invalid).
    #[error("schema registry refused subject {subject}: http {status}: {message}")]
    Refused {
        subject: String,
        status: u16,
        message: String,
    },
    /// No usable answer: connection refused, timeout, 5xx, 401/403, a malformed body. Transient.
    #[error("schema registry unavailable: {0}")]
    Unavailable(String),
}

/// A writer schema fetched from the registry.
#[derive(Debug)]
pub struct RegisteredSchema {
    #[cfg(test)]
    pub(crate) id: u32,
    pub(crate) schema: Schema,
    pub(crate) fingerprint: u64,
}

/// Client for one Schema Registry. Cheap to share behind an `Arc`; all caches are concurrent-safe.
pub struct SchemaRegistryClient {
    http: reqwest::Client,
    base: Url,
    basic_auth: Option<(String, SecretString)>,
    by_id: RwLock<HashMap<u32, Arc<RegisteredSchema>>>,
    by_fingerprint: RwLock<HashMap<u64, Arc<RegisteredSchema>>>,
    registered: Mutex<HashMap<(String, u64), u32>>,
}

impl std::fmt::Debug for SchemaRegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaRegistryClient")
            .field("base", &self.base.as_str())
            .field("user", &self.basic_auth.as_ref().map(|(user, _)| user))
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaById {
    schema: String,
    #[serde(default)]
    schema_type: Option<String>,
}

#[derive(Deserialize)]
struct RegisteredId {
    id: u32,
}

#[derive(Deserialize)]
struct ErrorBody {
    error_code: Option<i64>,
    message: Option<String>,
}

impl SchemaRegistryClient {
    /// A client for the registry at `url` (e.g. `http://localhost:8081`), with optional HTTP basic
    /// credentials; `request_timeout` bounds every call.
    pub fn new(
        url: &str,
        basic_auth: Option<(String, SecretString)>,
        request_timeout: Duration,
    ) -> Result<Self, RegistryError> {
        let mut base = Url::parse(url)
            .map_err(|e| RegistryError::Unavailable(format!("invalid url {url:?}: {e}")))?;
        if base.cannot_be_a_base() {
            return Err(RegistryError::Unavailable(format!("invalid url {url:?}")));
        }
        // A trailing slash would make `path_segments_mut().push` produce `//schemas`.
        base.path_segments_mut()
            .map_err(|()| RegistryError::Unavailable(format!("invalid url {url:?}")))?
            .pop_if_empty();
        let http = reqwest::Client::builder()
            .timeout(request_timeout)
            .connect_timeout(request_timeout)
            .build()
            .map_err(|e| RegistryError::Unavailable(format!("http client: {e}")))?;
        Ok(SchemaRegistryClient {
            http,
            base,
            basic_auth,
            by_id: RwLock::default(),
            by_fingerprint: RwLock::default(),
            registered: Mutex::default(),
        })
    }

    /// The writer schema with this id, from the cache or `GET /schemas/ids/{id}`.
    pub async fn schema_by_id(&self, id: u32) -> Result<Arc<RegisteredSchema>, RegistryError> {
        if let Some(hit) = read(&self.by_id).get(&id) {
            return Ok(Arc::clone(hit));
        }
        let url = self.url(&["schemas", "ids", &id.to_string()]);
        let (status, body) = self.send(self.http.get(url)).await?;
        let registered = Arc::new(schema_from_answer(id, status, &body)?);
        insert_bounded(&self.by_id, id, Arc::clone(&registered));
        insert_bounded(
            &self.by_fingerprint,
            registered.fingerprint,
            Arc::clone(&registered),
        );
        Ok(registered)
    }

    /// Puts a writer schema in the caches as if the registry had answered it: the registry stub of
    /// the fuzzing entry points, which must not wait on a network.
    #[doc(hidden)]
    pub(crate) fn preload(&self, id: u32, schema: Schema) {
        let registered = Arc::new(RegisteredSchema {
            #[cfg(test)]
            id,
            fingerprint: fingerprint(&schema),
            schema,
        });
        insert_bounded(&self.by_id, id, Arc::clone(&registered));
        insert_bounded(&self.by_fingerprint, registered.fingerprint, registered);
    }

    /// A writer schema seen earlier through [`Self::schema_by_id`], by its CRC-64-AVRO fingerprint.
    pub(crate) fn cached_by_fingerprint(&self, fingerprint: u64) -> Option<Arc<RegisteredSchema>> {
        read(&self.by_fingerprint).get(&fingerprint).cloned()
    }

    /// Registers `schema_json` under `subject` (`POST /subjects/{subject}/versions`) and returns its
    /// id; registering the same schema again is a no-op for the registry, and cached here.
    pub(crate) async fn register(
        &self,
        subject: &str,
        schema: &Schema,
        schema_json: &str,
    ) -> Result<u32, RegistryError> {
        let key = (subject.to_owned(), fingerprint(schema));
        if let Some(id) = self
            .registered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Ok(*id);
        }
        let url = self.url(&["subjects", subject, "versions"]);
        let body = serde_json::json!({ "schema": schema_json }).to_string();
        let request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(body);
        let (status, body) = self.send(request).await?;
        if status.is_server_error()
            || matches!(
                status,
                StatusCode::UNAUTHORIZED
                    | StatusCode::FORBIDDEN
                    | StatusCode::REQUEST_TIMEOUT
                    | StatusCode::TOO_MANY_REQUESTS
            )
        {
            return Err(unavailable_status(status, &body));
        }
        if !status.is_success() {
            return Err(RegistryError::Refused {
                subject: subject.to_owned(),
                status: status.as_u16(),
                message: error_message(&body),
            });
        }
        let RegisteredId { id } = serde_json::from_slice(&body).map_err(|e| {
            RegistryError::Unavailable(format!("malformed answer registering {subject}: {e}"))
        })?;
        self.registered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, id);
        Ok(id)
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        // `new` rejected cannot-be-a-base URLs, so this never fails; ignoring is total.
        if let Ok(mut path) = url.path_segments_mut() {
            path.extend(segments);
        }
        url
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, Vec<u8>), RegistryError> {
        let request = match &self.basic_auth {
            Some((user, password)) => request.basic_auth(user, Some(password.expose_secret())),
            None => request,
        };
        let mut response = request
            .header(reqwest::header::ACCEPT, CONTENT_TYPE)
            .send()
            .await
            .map_err(|e| RegistryError::Unavailable(describe(&e)))?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| RegistryError::Unavailable(describe(&e)))?
        {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(RegistryError::Unavailable(format!(
                    "answer larger than {MAX_RESPONSE_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body))
    }
}

/// What the registry's answer to `GET /schemas/ids/{id}` means: the writer schema, an id it does
/// not know (the record's fault), or a registry that did not answer usefully (retried). The
/// answer is untrusted input: it never panics, whatever the bytes.
pub(crate) fn schema_from_answer(
    id: u32,
    status: StatusCode,
    body: &[u8],
) -> Result<RegisteredSchema, RegistryError> {
    if status == StatusCode::NOT_FOUND && error_code(body) == Some(SCHEMA_NOT_FOUND) {
        return Err(RegistryError::UnknownSchemaId(id));
    }
    if !status.is_success() {
        return Err(unavailable_status(status, body));
    }
    let answer: SchemaById = serde_json::from_slice(body).map_err(|e| {
        RegistryError::Unavailable(format!("malformed answer for schema id {id}: {e}"))
    })?;
    if let Some(kind) = answer
        .schema_type
        .filter(|t| !t.eq_ignore_ascii_case("AVRO"))
    {
        return Err(RegistryError::UnusableSchema {
            schema_id: id,
            reason: format!("schema type is {kind}"),
        });
    }
    // apache-avro 0.21 unwraps inside its schema parser (an invalid record name, for one: found
    // by fuzzing), so a broken or hostile registry answer could panic the decoding task; the
    // panic is caught here and the schema reported unusable like any other parse failure.
    let parsed = std::panic::catch_unwind(AssertUnwindSafe(|| Schema::parse_str(&answer.schema)))
        .map_err(|_| RegistryError::UnusableSchema {
        schema_id: id,
        reason: "the avro schema parser failed on it".into(),
    })?;
    let schema = parsed.map_err(|e| RegistryError::UnusableSchema {
        schema_id: id,
        reason: e.to_string(),
    })?;
    Ok(RegisteredSchema {
        #[cfg(test)]
        id,
        fingerprint: fingerprint(&schema),
        schema,
    })
}

fn read<K, V>(lock: &RwLock<HashMap<K, V>>) -> std::sync::RwLockReadGuard<'_, HashMap<K, V>> {
    // The maps hold only complete entries, so a panic elsewhere cannot leave them inconsistent.
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn insert_bounded<K: std::hash::Hash + Eq + Copy, V>(
    lock: &RwLock<HashMap<K, V>>,
    key: K,
    value: V,
) {
    let mut map = lock.write().unwrap_or_else(PoisonError::into_inner);
    if map.len() >= MAX_CACHED_SCHEMAS && !map.contains_key(&key) {
        // Any victim will do: a miss only costs one more registry call.
        if let Some(victim) = map.keys().next().copied() {
            map.remove(&victim);
        }
    }
    map.insert(key, value);
}

fn error_code(body: &[u8]) -> Option<i64> {
    serde_json::from_slice::<ErrorBody>(body).ok()?.error_code
}

fn error_message(body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody {
            message: Some(m), ..
        }) => m,
        _ => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
    }
}

fn unavailable_status(status: StatusCode, body: &[u8]) -> RegistryError {
    RegistryError::Unavailable(format!("http {}: {}", status.as_u16(), error_message(body)))
}

fn describe(error: &reqwest::Error) -> String {
    // reqwest's Display omits the cause ("error sending request"); the chain says why.
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (fuzz/corpus/registry_answer/crash-avro-invalid-record-name): apache-avro
    /// panicked on a record whose name is not an Avro name.
    #[test]
    fn an_answer_the_avro_parser_panics_on_is_an_unusable_schema() {
        let schema = r#"{"type":"record","name":"Not a name.","fields":[]}"#;
        let body = serde_json::json!({ "schema": schema }).to_string();
        let answer = schema_from_answer(7, StatusCode::OK, body.as_bytes());
        assert!(
            matches!(
                answer,
                Err(RegistryError::UnusableSchema { schema_id: 7, .. })
            ),
            "{answer:?}"
        );
    }

    #[test]
    fn registry_answers_map_to_their_errors() {
        let not_found = br#"{"error_code":40403,"message":"Schema not found"}"#;
        assert!(matches!(
            schema_from_answer(3, StatusCode::NOT_FOUND, not_found),
            Err(RegistryError::UnknownSchemaId(3))
        ));
        assert!(matches!(
            schema_from_answer(3, StatusCode::INTERNAL_SERVER_ERROR, b"boom"),
            Err(RegistryError::Unavailable(_))
        ));
        assert!(matches!(
            schema_from_answer(3, StatusCode::OK, b"{\"schema\":"),
            Err(RegistryError::Unavailable(_))
        ));
        let good = serde_json::json!({ "schema": "\"string\"" }).to_string();
        assert_eq!(
            schema_from_answer(3, StatusCode::OK, good.as_bytes())
                .map(|registered| registered.id)
                .ok(),
            Some(3)
        );
    }
}
