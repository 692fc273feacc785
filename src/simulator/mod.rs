//! An Alipay+ stand-in over HTTP for tests, integration environments and the demo: it serves
//! `POST /aps/api/v1/merchants/notifyRegistrationStatus`, verifies request signatures with the
//! MPP's public key, checks bodies strictly against SPEC 2, signs its answers with its own key,
//! and injects faults from [`rules`].
//!
//! Other routes: `GET /stats` (JSON [`SimulatorStats`]), `POST /admin/clients/{id}/refuse` and
//! `…/accept` (answer `INVALID_CLIENT` to a client id, or stop doing so), `PUT /admin/rules`
//! (replace the fault rules with a TOML rules document).
//!
//! Several MPPs can be trusted at once ([`TrustedKey`], per client id), and keys can be added,
//! withdrawn and the answer key replaced while it runs, to rehearse key rotations; each arrival
//! records which trusted key verified it and the `keyVersion` it carried.
//!
//! Tests can also hold answers at a gate ([`SimulatorHandle::hold`]) and let them through one by
//! one ([`SimulatorHandle::release`]), to stop the client's work at a known point.
//!
//! It is a test double, not a model of Alipay+'s internals: it keeps no state about
//! registrations beyond counters, and never talks to anything else.

pub mod rules;
pub mod stats;
pub mod validate;

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use rules::{Fault, FaultRule, RulesError, SimulatorRules};
pub use stats::{Arrival, SimulatorStats};

use crate::alipayplus::NOTIFY_REGISTRATION_STATUS_PATH;
use crate::alipayplus::signature::{
    encode_signature, format_request_time, parse_signature_header, signature_header_value,
    signed_content, verify_signature,
};
use crate::keys::{PrivateSigningKey, PublicVerifyingKey, run_rsa};
use rules::RuleCounters;
use stats::StatsRecorder;

/// Largest request body accepted (Alipay+ requests are well under 1 KiB).
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Everything a simulator needs; the CLI fills it from flags, tests build it directly.
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    /// Where to listen; port 0 picks a free port (default `127.0.0.1:0`).
    pub listen: SocketAddr,
    /// Signs every answer, like Alipay+'s own key.
    pub private_key: PrivateSigningKey,
    /// Verifies request signatures of any client id; with no trusted key at all (this or
    /// `trusted_keys`) any signature is accepted (and a log line says so).
    pub mpp_public_key: Option<PublicVerifyingKey>,
    /// More MPP public keys, each for one client id or any: a request verifies when one of the
    /// keys of its client id does.
    pub trusted_keys: Vec<TrustedKey>,
    /// `keyVersion` of response signatures.
    pub key_version: u32,
    /// Client ids accepted; empty accepts any.
    pub client_ids: Vec<String>,
    /// Client ids answered `INVALID_CLIENT` from the start (toggle at run time via the admin
    /// routes or [`SimulatorHandle::accept_client`]).
    pub refused_client_ids: Vec<String>,
    /// Added to every answer.
    pub latency: Duration,
    pub rules: Vec<FaultRule>,
    /// Bound on the arrival list of [`SimulatorStats`].
    pub max_arrivals: usize,
}

impl SimulatorConfig {
    /// Defaults around a signing key: 127.0.0.1:0, no request verification, no faults.
    pub fn new(private_key: PrivateSigningKey) -> Self {
        SimulatorConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            private_key,
            mpp_public_key: None,
            trusted_keys: Vec::new(),
            key_version: 1,
            client_ids: Vec::new(),
            refused_client_ids: Vec::new(),
            latency: Duration::ZERO,
            rules: Vec::new(),
            max_arrivals: 100_000,
        }
    }

    /// Loads the keys and (optionally) a rules file, for `regnotify simulator`. A `latency` in
    /// the rules file replaces `self.latency` only if set there.
    pub fn from_files(
        private_key_file: &Path,
        mpp_public_key_file: Option<&Path>,
        rules_file: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let private_key =
            PrivateSigningKey::from_file(private_key_file).context("simulator private key")?;
        let mut config = SimulatorConfig::new(private_key);
        if let Some(path) = mpp_public_key_file {
            config.mpp_public_key =
                Some(PublicVerifyingKey::from_file(path).context("simulator mpp public key")?);
        }
        if let Some(path) = rules_file {
            config.apply_rules(SimulatorRules::load(path)?);
        }
        Ok(config)
    }

    pub fn apply_rules(&mut self, rules: SimulatorRules) {
        if let Some(latency) = rules.latency {
            self.latency = latency;
        }
        self.rules = rules.rules;
    }
}

/// An MPP public key the simulator trusts.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    /// Recorded in [`Arrival::signed_by`] for the requests it verifies.
    pub name: String,
    /// The client id it signs for; `None`: any.
    pub client_id: Option<String>,
    pub key: PublicVerifyingKey,
}

/// Starts simulators.
#[derive(Debug)]
pub struct Simulator;

impl Simulator {
    /// Binds and starts serving in a background task; returns once the port is bound.
    pub async fn start(config: SimulatorConfig) -> anyhow::Result<SimulatorHandle> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("simulator cannot listen on {}", config.listen))?;
        let addr = listener
            .local_addr()
            .context("simulator listener address")?;
        let mut trusted = config.trusted_keys;
        if let Some(key) = config.mpp_public_key {
            trusted.insert(
                0,
                TrustedKey {
                    name: "mpp".into(),
                    client_id: None,
                    key,
                },
            );
        }
        if trusted.is_empty() {
            tracing::warn!(%addr, "simulator accepts requests without checking their signature");
        }
        let shutdown = CancellationToken::new();
        let shared = Arc::new(Shared {
            signatures: Mutex::default(),
            answer_key: RwLock::new((Arc::new(config.private_key), config.key_version)),
            check_signatures: !trusted.is_empty(),
            trusted: RwLock::new(trusted),
            client_ids: config.client_ids.into_iter().collect(),
            refused: Mutex::new(config.refused_client_ids.into_iter().collect()),
            behaviour: RwLock::new(Behaviour {
                latency: config.latency,
                rules: config.rules,
            }),
            counters: Mutex::new(RuleCounters::default()),
            stats: Mutex::new(StatsRecorder::new(config.max_arrivals)),
            gate: Mutex::new(None),
            outage: Mutex::new(None),
            refused_until: Mutex::new(HashMap::new()),
            shutdown: shutdown.clone(),
        });
        let app = Router::new()
            .route(NOTIFY_REGISTRATION_STATUS_PATH, post(notify))
            .route("/stats", get(stats_route))
            .route("/admin/clients/{id}/refuse", post(refuse_route))
            .route("/admin/clients/{id}/accept", post(accept_route))
            .route("/admin/rules", put(rules_route))
            .route("/admin/outage", post(outage_route))
            .fallback(no_interface)
            .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
            .with_state(Arc::clone(&shared));
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await
        });
        tracing::info!(%addr, "alipay+ simulator listening");
        Ok(SimulatorHandle {
            addr,
            shared,
            shutdown,
            task: Some(task),
        })
    }
}

/// A running simulator. Dropping it stops the server too (without waiting).
#[derive(Debug)]
pub struct SimulatorHandle {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl SimulatorHandle {
    /// `http://<addr>`, the `alipayplus.base_url` to point a client at.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> SimulatorStats {
        lock(&self.shared.stats).snapshot()
    }

    /// The arrivals recorded since the last call, oldest first, forgotten by the simulator: a
    /// long run that drains them often keeps its memory flat and loses none (compare
    /// [`SimulatorStats::arrivals_dropped`]).
    pub fn take_arrivals(&self) -> Vec<Arrival> {
        lock(&self.shared.stats).take_arrivals()
    }

    /// Trusts one more MPP public key (replacing a trusted key of the same name).
    pub fn trust(&self, key: TrustedKey) {
        let mut trusted = self
            .shared
            .trusted
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        trusted.retain(|known| known.name != key.name);
        trusted.push(key);
    }

    /// Stops trusting the MPP public key called `name`.
    pub fn distrust(&self, name: &str) {
        self.shared
            .trusted
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|known| known.name != name);
    }

    /// Signs answers with `key` and `key_version` from now on (Alipay+ rotating its key).
    pub fn set_answer_key(&self, key: PrivateSigningKey, key_version: u32) {
        *self
            .shared
            .answer_key
            .write()
            .unwrap_or_else(PoisonError::into_inner) = (Arc::new(key), key_version);
        lock(&self.shared.signatures).clear();
    }

    /// Answer `INVALID_CLIENT` to `client_id` from now on.
    pub fn refuse_client(&self, client_id: &str) {
        lock(&self.shared.refused).insert(client_id.to_owned());
    }

    /// Stop refusing `client_id`.
    pub fn accept_client(&self, client_id: &str) {
        lock(&self.shared.refused).remove(client_id);
    }

    /// Closes the gate: from now on every call waits before it is answered, until
    /// [`release`](Self::release) lets it through or [`open`](Self::open) opens the gate. Waiting
    /// calls count as open calls (and `held_calls`) in the stats.
    pub fn hold(&self) {
        let mut gate = lock(&self.shared.gate);
        if gate.is_none() {
            *gate = Some(Arc::new(Semaphore::new(0)));
        }
    }

    /// Lets `calls` more calls through the closed gate (waiting ones first, in arrival order;
    /// later arrivals use what is left). No effect while the gate is open.
    pub fn release(&self, calls: usize) {
        if let Some(gate) = lock(&self.shared.gate).as_ref() {
            gate.add_permits(calls);
        }
    }

    /// Opens the gate: every waiting call goes on, and later calls no longer wait.
    pub fn open(&self) {
        if let Some(gate) = lock(&self.shared.gate).take() {
            gate.close();
        }
    }

    /// Alipay+ is down for `duration`: every call fails as `mode` says, then service is back.
    pub fn outage(&self, duration: Duration, mode: OutageMode) {
        self.shared.start_outage(duration, mode);
    }

    /// Answer `INVALID_CLIENT` to `client_id` for `duration`, then accept it again.
    pub fn refuse_client_for(&self, client_id: &str, duration: Duration) {
        self.shared.refuse_for(client_id, duration);
    }

    /// Replaces the fault rules (and the latency, when the document sets one).
    pub fn set_rules(&self, rules: SimulatorRules) {
        self.shared.set_rules(rules);
    }

    /// Stops accepting connections, ends hanging answers, and waits for the server to finish.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await
                .context("simulator task failed")?
                .context("simulator server failed")?;
        }
        Ok(())
    }
}

impl Drop for SimulatorHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[derive(Debug)]
struct Behaviour {
    latency: Duration,
    rules: Vec<FaultRule>,
}

#[derive(Debug)]
struct Shared {
    /// Signs answers, with its `keyVersion`.
    answer_key: RwLock<(Arc<PrivateSigningKey>, u32)>,
    /// Whether request signatures are checked (some key was trusted at start).
    check_signatures: bool,
    trusted: RwLock<Vec<TrustedKey>>,
    client_ids: HashSet<String>,
    refused: Mutex<HashSet<String>>,
    behaviour: RwLock<Behaviour>,
    counters: Mutex<RuleCounters>,
    stats: Mutex<StatsRecorder>,
    /// Recent answer signatures by signed content. Answers are timed to the second, so within one
    /// second identical answers (most successes) share a signature: the simulator then costs the
    /// demo and benchmarks one RSA signature per distinct answer, not per call.
    signatures: Mutex<HashMap<Vec<u8>, Vec<u8>>>,
    /// Closed gate: calls wait for a permit (see [`SimulatorHandle::hold`]).
    gate: Mutex<Option<Arc<Semaphore>>>,
    /// A scripted outage (see [`SimulatorHandle::outage`]).
    outage: Mutex<Option<Outage>>,
    /// Client ids refused until a time (see [`SimulatorHandle::refuse_client_for`]).
    refused_until: Mutex<HashMap<String, std::time::Instant>>,
    shutdown: CancellationToken,
}

/// Bound on remembered answer signatures; the map is cleared when it is reached.
const MAX_CACHED_SIGNATURES: usize = 256;

/// A scripted outage: until `until`, calls fail as `mode` says.
#[derive(Debug, Clone, Copy)]
struct Outage {
    until: std::time::Instant,
    mode: OutageMode,
}

/// How calls fail during a scripted outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutageMode {
    /// The connection is dropped before the answer is complete.
    Drop,
    /// HTTP 503.
    Unavailable,
    /// Half of the calls one way, half the other, at random.
    Mixed,
}

impl std::str::FromStr for OutageMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "drop" => Ok(OutageMode::Drop),
            "503" => Ok(OutageMode::Unavailable),
            "mixed" => Ok(OutageMode::Mixed),
            other => Err(format!(
                "outage mode `{other}`: expected drop, 503 or mixed"
            )),
        }
    }
}

/// A body that fails at once: the server aborts the connection mid-answer.
struct DroppedConnection;

impl tokio::io::AsyncRead for DroppedConnection {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Err(std::io::Error::other("simulated dropped connection")))
    }
}

impl Shared {
    fn start_outage(&self, duration: Duration, mode: OutageMode) {
        tracing::info!(?duration, ?mode, "simulator outage starts");
        *lock(&self.outage) = Some(Outage {
            until: std::time::Instant::now() + duration,
            mode,
        });
    }

    fn refuse_for(&self, client_id: &str, duration: Duration) {
        tracing::info!(client_id, ?duration, "simulator refuses client for a while");
        lock(&self.refused_until)
            .insert(client_id.to_owned(), std::time::Instant::now() + duration);
    }

    fn set_rules(&self, rules: SimulatorRules) {
        let mut behaviour = self
            .behaviour
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(latency) = rules.latency {
            behaviour.latency = latency;
        }
        behaviour.rules = rules.rules;
    }

    fn accepts(&self, client_id: &str) -> bool {
        let refused_for_now = lock(&self.refused_until)
            .get(client_id)
            .is_some_and(|until| std::time::Instant::now() < *until);
        (self.client_ids.is_empty() || self.client_ids.contains(client_id))
            && !lock(&self.refused).contains(client_id)
            && !refused_for_now
    }

    /// How the current call fails, while a scripted outage lasts.
    fn outage_now(&self) -> Option<OutageMode> {
        let mut outage = lock(&self.outage);
        match *outage {
            Some(Outage { until, mode }) if std::time::Instant::now() < until => Some(match mode {
                OutageMode::Mixed if rand::random::<bool>() => OutageMode::Drop,
                OutageMode::Mixed => OutageMode::Unavailable,
                other => other,
            }),
            Some(_) => {
                *outage = None;
                None
            }
            None => None,
        }
    }

    /// The name of the trusted key of `client_id` that verifies the request, if any.
    fn signed_by(
        &self,
        path: &str,
        client_id: &str,
        request_time: &str,
        body: &[u8],
        signature: Option<&str>,
    ) -> Option<String> {
        let trusted = self.trusted.read().unwrap_or_else(PoisonError::into_inner);
        trusted
            .iter()
            .filter(|known| known.client_id.as_deref().is_none_or(|id| id == client_id))
            .find(|known| {
                verify_signature(&known.key, path, client_id, request_time, body, signature)
                    == crate::alipayplus::SignatureCheck::Verified
            })
            .map(|known| known.name.clone())
    }

    fn record(&self, label: &str) {
        lock(&self.stats).answer(label);
    }

    /// Waits at a closed gate until let through; false when the simulator shuts down first.
    async fn pass_gate(&self) -> bool {
        let Some(gate) = lock(&self.gate).clone() else {
            return true;
        };
        lock(&self.stats).held(true);
        let passed = tokio::select! {
            permit = gate.acquire() => {
                // A closed semaphore means the gate was opened.
                if let Ok(permit) = permit {
                    permit.forget();
                }
                true
            }
            () = self.shutdown.cancelled() => false,
        };
        lock(&self.stats).held(false);
        passed
    }

    /// Sleeps unless the simulator shuts down first; false when it did.
    async fn sleep(&self, duration: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(duration) => true,
            () = self.shutdown.cancelled() => false,
        }
    }
}

/// Counters and sets stay consistent even if a holder panicked, so poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How an answer is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signing {
    Proper,
    /// Well-formed but over other content.
    Wrong,
    Unsigned,
}

struct Answer<'a> {
    path: &'a str,
    client_id: &'a str,
    status: &'a str,
    code: &'a str,
    message: &'a str,
    signing: Signing,
}

fn result_body(status: &str, code: &str, message: &str) -> Vec<u8> {
    serde_json::json!({
        "result": { "resultCode": code, "resultStatus": status, "resultMessage": message }
    })
    .to_string()
    .into_bytes()
}

async fn answer(shared: &Shared, answer: Answer<'_>) -> Response {
    shared.record(answer.code);
    let body = result_body(answer.status, answer.code, answer.message);
    signed_response(shared, answer.path, answer.client_id, body, answer.signing).await
}

async fn signed_response(
    shared: &Shared,
    path: &str,
    client_id: &str,
    body: Vec<u8>,
    signing: Signing,
) -> Response {
    let response_time = format_request_time(chrono::Utc::now());
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    if let Ok(value) = HeaderValue::from_str(client_id) {
        headers.insert("client-id", value);
    }
    if let Ok(value) = HeaderValue::from_str(&response_time) {
        headers.insert("response-time", value);
    }
    if signing != Signing::Unsigned {
        let mut content = signed_content(path, client_id, &response_time, &body);
        if signing == Signing::Wrong {
            content.push(b' ');
        }
        let (key, key_version) = {
            let answer_key = shared
                .answer_key
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            (Arc::clone(&answer_key.0), answer_key.1)
        };
        let cached = lock(&shared.signatures).get(&content).cloned();
        let signed = match cached {
            Some(raw) => Some(raw),
            None => {
                let signing = content.clone();
                let raw = run_rsa(move || key.sign(&signing))
                    .await
                    .ok()
                    .and_then(Result::ok);
                if let Some(raw) = &raw {
                    let mut cache = lock(&shared.signatures);
                    if cache.len() >= MAX_CACHED_SIGNATURES {
                        cache.clear();
                    }
                    cache.insert(content, raw.clone());
                }
                raw
            }
        };
        if let Some(raw) = signed {
            let value = signature_header_value(key_version, &encode_signature(&raw));
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert("signature", value);
            }
        }
    }
    (StatusCode::OK, headers, body).into_response()
}

/// One open call in the stats, from arrival until the answer is sent or the client goes away
/// (axum then drops the handler, and this with it).
struct OpenCall {
    shared: Arc<Shared>,
    merchant_id: Option<String>,
}

impl OpenCall {
    fn open(shared: &Arc<Shared>, body: &[u8]) -> OpenCall {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Merchant {
            reference_merchant_id: String,
        }
        let merchant_id = serde_json::from_slice::<Merchant>(body)
            .ok()
            .map(|m| m.reference_merchant_id);
        lock(&shared.stats).call_opened(merchant_id.as_deref());
        OpenCall {
            shared: Arc::clone(shared),
            merchant_id,
        }
    }
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        lock(&self.shared.stats).call_closed(self.merchant_id.as_deref());
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn notify(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    lock(&shared.stats).call();
    match shared.outage_now() {
        Some(OutageMode::Unavailable) => {
            shared.record("OUTAGE_503");
            return (StatusCode::SERVICE_UNAVAILABLE, "simulated outage").into_response();
        }
        Some(_) => {
            shared.record("OUTAGE_DROPPED");
            let body =
                axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(DroppedConnection));
            return (StatusCode::OK, body).into_response();
        }
        None => {}
    }
    let _open = OpenCall::open(&shared, &body);
    if !shared.pass_gate().await {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let latency = shared
        .behaviour
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .latency;
    if !latency.is_zero() && !shared.sleep(latency).await {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let path = uri.path();
    let client_id = header(&headers, "client-id").unwrap_or_default();
    let reply = |status, code, message, signing| Answer {
        path,
        client_id,
        status,
        code,
        message,
        signing,
    };
    if client_id.is_empty() {
        let a = reply(
            "F",
            "INVALID_CLIENT",
            "Client-Id header is missing",
            Signing::Unsigned,
        );
        return answer(&shared, a).await;
    }
    if !shared.accepts(client_id) {
        let a = reply(
            "F",
            "INVALID_CLIENT",
            "client id is not accepted",
            Signing::Proper,
        );
        return answer(&shared, a).await;
    }
    if !header(&headers, "content-type")
        .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("application/json"))
    {
        let a = reply(
            "F",
            "MEDIA_TYPE_NOT_ACCEPTABLE",
            "expected application/json",
            Signing::Proper,
        );
        return answer(&shared, a).await;
    }
    let request_time = header(&headers, "request-time").unwrap_or_default();
    let mut signed_by = None;
    if shared.check_signatures {
        // Verifying costs about 12 µs: less than handing it to another thread, and it must not
        // queue behind the signatures waiting in `run_rsa`.
        signed_by = shared.signed_by(
            path,
            client_id,
            request_time,
            &body,
            header(&headers, "signature"),
        );
        if signed_by.is_none() {
            lock(&shared.stats).signature_failure();
            // Alipay+ leaves the signature off this answer: it cannot trust who it talks to.
            let a = reply(
                "F",
                "INVALID_SIGNATURE",
                "signature verification failed",
                Signing::Unsigned,
            );
            return answer(&shared, a).await;
        }
    }
    if chrono::DateTime::parse_from_rfc3339(request_time).is_err() {
        let a = reply(
            "F",
            "PARAM_ILLEGAL",
            "Request-Time is not RFC 3339",
            Signing::Proper,
        );
        return answer(&shared, a).await;
    }
    let request = match validate::validate_request_body(&body) {
        Ok(request) => request,
        Err(message) => {
            let a = reply("F", "PARAM_ILLEGAL", &message, Signing::Proper);
            return answer(&shared, a).await;
        }
    };
    lock(&shared.stats).arrival(Arrival {
        reference_merchant_id: request.reference_merchant_id.clone(),
        registration_request_id: request.registration_request_id.clone(),
        registration_status: request.registration_status.clone(),
        client_id: client_id.to_owned(),
        key_version: header(&headers, "signature")
            .and_then(|value| parse_signature_header(value).ok())
            .and_then(|parsed| parsed.key_version),
        signed_by,
    });
    let faults = {
        let behaviour = shared
            .behaviour
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        lock(&shared.counters).select(
            &behaviour.rules,
            &request.reference_merchant_id,
            &request.registration_request_id,
            rand::random::<f64>,
        )
    };
    for fault in faults {
        match fault {
            Fault::Latency { delay } => {
                if !shared.sleep(delay).await {
                    return StatusCode::SERVICE_UNAVAILABLE.into_response();
                }
            }
            Fault::Result {
                status,
                code,
                message,
            } => {
                let message = message.unwrap_or_else(|| format!("simulated {code}"));
                let a = reply(&status, &code, &message, Signing::Proper);
                return answer(&shared, a).await;
            }
            Fault::HttpStatus { status } => {
                shared.record(&format!("HTTP_{status}"));
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return (status, "simulated failure").into_response();
            }
            Fault::Hang { duration } => {
                shared.record("HANG");
                shared.sleep(duration).await;
                let body = result_body("U", "UNKNOWN_EXCEPTION", "simulated hang");
                return signed_response(&shared, path, client_id, body, Signing::Proper).await;
            }
            Fault::BadSignature => {
                shared.record("BAD_SIGNATURE");
                let body = result_body("S", "SUCCESS", "success");
                return signed_response(&shared, path, client_id, body, Signing::Wrong).await;
            }
            Fault::UnsignedSuccess => {
                shared.record("UNSIGNED_SUCCESS");
                let body = result_body("S", "SUCCESS", "success");
                return signed_response(&shared, path, client_id, body, Signing::Unsigned).await;
            }
            Fault::Garbled => {
                shared.record("GARBLED");
                let body = b"<html><body>502 upstream garbled</body></html>".to_vec();
                return signed_response(&shared, path, client_id, body, Signing::Proper).await;
            }
        }
    }
    answer(&shared, reply("S", "SUCCESS", "success", Signing::Proper)).await
}

async fn no_interface(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap) -> Response {
    let client_id = header(&headers, "client-id").unwrap_or_default();
    let a = Answer {
        path: uri.path(),
        client_id,
        status: "F",
        code: "NO_INTERFACE_DEF",
        message: "no such interface",
        signing: Signing::Unsigned,
    };
    answer(&shared, a).await
}

async fn stats_route(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(lock(&shared.stats).snapshot()).into_response()
}

/// `?seconds=N` for a scripted refusal or outage; `mode=drop|503|mixed` for an outage.
#[derive(Debug, serde::Deserialize)]
struct ForAWhile {
    seconds: Option<f64>,
    mode: Option<String>,
}

impl ForAWhile {
    /// `seconds` as a duration; `Err` with the text of a 400 answer when it is not one.
    fn duration(&self) -> Result<Option<Duration>, &'static str> {
        self.seconds
            .map(|seconds| {
                Duration::try_from_secs_f64(seconds)
                    .map_err(|_| "seconds: a number of seconds, 0 or more")
            })
            .transpose()
    }
}

async fn refuse_route(
    State(shared): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
    axum::extract::Query(query): axum::extract::Query<ForAWhile>,
) -> Response {
    match query.duration() {
        Err(error) => (StatusCode::BAD_REQUEST, error).into_response(),
        Ok(Some(duration)) => {
            shared.refuse_for(&id, duration);
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(None) => {
            tracing::info!(client_id = %id, "simulator refuses client");
            lock(&shared.refused).insert(id);
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

/// `POST /admin/outage?seconds=N&mode=drop|503|mixed` (mode: mixed unless given).
async fn outage_route(
    State(shared): State<Arc<Shared>>,
    axum::extract::Query(query): axum::extract::Query<ForAWhile>,
) -> Response {
    let duration = match query.duration() {
        Err(error) => return (StatusCode::BAD_REQUEST, error).into_response(),
        Ok(Some(duration)) => duration,
        Ok(None) => {
            return (StatusCode::BAD_REQUEST, "seconds is required").into_response();
        }
    };
    let mode = match query.mode.as_deref().unwrap_or("mixed").parse() {
        Ok(mode) => mode,
        Err(error) => return (StatusCode::BAD_REQUEST, error).into_response(),
    };
    shared.start_outage(duration, mode);
    StatusCode::NO_CONTENT.into_response()
}

async fn accept_route(
    State(shared): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
) -> StatusCode {
    tracing::info!(client_id = %id, "simulator accepts client");
    lock(&shared.refused).remove(&id);
    StatusCode::NO_CONTENT
}

async fn rules_route(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let text = String::from_utf8_lossy(&body);
    match SimulatorRules::from_toml(&text, "request body") {
        Ok(rules) => {
            shared.set_rules(rules);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}
