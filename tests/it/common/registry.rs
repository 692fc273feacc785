//! A Confluent Schema Registry stand-in on 127.0.0.1 for tests: serves `GET /schemas/ids/{id}` and
//! `POST /subjects/{subject}/versions`, counts fetches, answers a chosen error status on demand,
//! and can go down (its port refuses connections) and come back on the same address, to stage a
//! registry outage.
//!
//! Shared by the pipeline harness (`tests/it/common/mod.rs`) and the codec tests
//! (`tests/it/codec.rs`, which use it without the Kafka harness).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use regnotify::codec::SchemaRegistryClient;
use regnotify::config::SchemaRegistrySettings;

/// What the registry knows and what it was asked.
#[derive(Debug, Default)]
pub struct RegistryState {
    pub schemas: Mutex<HashMap<u32, String>>,
    /// Every registration: (subject, schema, content type).
    pub registered: Mutex<Vec<(String, String, Option<String>)>>,
    pub fetches: AtomicUsize,
    /// Status to answer every request with instead of the normal behaviour.
    pub fail_with: Mutex<Option<StatusCode>>,
}

#[derive(Debug)]
struct Server {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// A running registry stand-in. Dropping it stops the server.
#[derive(Debug)]
pub struct RegistryStub {
    /// `http://127.0.0.1:PORT/` (the trailing slash is on purpose: clients must cope with it).
    pub url: String,
    addr: SocketAddr,
    pub state: Arc<RegistryState>,
    server: Mutex<Option<Server>>,
}

impl RegistryStub {
    pub async fn start() -> RegistryStub {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(RegistryState::default());
        let server = serve(listener, Arc::clone(&state));
        RegistryStub {
            url: format!("http://{addr}/"),
            addr,
            state,
            server: Mutex::new(Some(server)),
        }
    }

    /// Makes `schema` known under `id`.
    pub fn add(&self, id: u32, schema: &str) {
        self.state
            .schemas
            .lock()
            .unwrap()
            .insert(id, schema.to_owned());
    }

    /// `GET /schemas/ids/{id}` requests answered so far.
    pub fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }

    /// Every registration so far: (subject, schema, content type).
    pub fn registered(&self) -> Vec<(String, String, Option<String>)> {
        self.state.registered.lock().unwrap().clone()
    }

    /// The id the registry gave `subject`'s schema (its first registration).
    pub fn id_of_subject(&self, subject: &str) -> Option<u32> {
        let registered = self.registered();
        let (_, schema, _) = registered.iter().find(|(s, _, _)| s == subject)?;
        self.state
            .schemas
            .lock()
            .unwrap()
            .iter()
            .find(|(_, s)| *s == schema)
            .map(|(id, _)| *id)
    }

    /// Answer every request with `status` (`None`: behave normally again).
    pub fn fail_with(&self, status: Option<StatusCode>) {
        *self.state.fail_with.lock().unwrap() = status;
    }

    pub fn client(&self) -> Arc<SchemaRegistryClient> {
        Arc::new(SchemaRegistryClient::new(&self.url, None, Duration::from_secs(5)).unwrap())
    }

    /// `[schema_registry]` settings pointing at this registry.
    pub fn settings(&self) -> SchemaRegistrySettings {
        SchemaRegistrySettings {
            url: self.url.clone(),
            request_timeout: Duration::from_secs(2),
            ..SchemaRegistrySettings::default()
        }
    }

    pub fn is_up(&self) -> bool {
        self.server.lock().unwrap().is_some()
    }

    /// Stops serving: open connections are closed once their request is answered, and the port
    /// refuses new ones until [`RegistryStub::come_back`].
    pub async fn go_down(&self) {
        let server = self.server.lock().unwrap().take();
        let Some(server) = server else {
            return;
        };
        server.stop.cancel();
        // Graceful shutdown closes idle keep-alive connections too; a client's pooled connection
        // must not keep the registry reachable through the outage.
        if tokio::time::timeout(Duration::from_secs(10), server.task)
            .await
            .is_err()
        {
            panic!("the schema registry stand-in did not stop within 10 s");
        }
    }

    /// Serves again on the same address.
    pub async fn come_back(&self) {
        if self.is_up() {
            return;
        }
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .unwrap_or_else(|e| panic!("cannot listen on {} again: {e}", self.addr));
        let server = serve(listener, Arc::clone(&self.state));
        *self.server.lock().unwrap() = Some(server);
    }
}

impl Drop for RegistryStub {
    fn drop(&mut self) {
        if let Some(server) = self.server.lock().unwrap().take() {
            server.stop.cancel();
        }
    }
}

fn serve(listener: tokio::net::TcpListener, state: Arc<RegistryState>) -> Server {
    let app = Router::new()
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/subjects/{subject}/versions", post(register))
        .with_state(state);
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(token.cancelled_owned())
            .await;
    });
    Server { stop, task }
}

async fn schema_by_id(
    State(state): State<Arc<RegistryState>>,
    UrlPath(id): UrlPath<u32>,
) -> (StatusCode, Json<serde_json::Value>) {
    state.fetches.fetch_add(1, Ordering::SeqCst);
    if let Some(status) = *state.fail_with.lock().unwrap() {
        return (
            status,
            Json(json!({"error_code": 50001, "message": "boom"})),
        );
    }
    match state.schemas.lock().unwrap().get(&id) {
        Some(schema) => (StatusCode::OK, Json(json!({ "schema": schema }))),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error_code": 40403, "message": "Schema not found"})),
        ),
    }
}

async fn register(
    State(state): State<Arc<RegistryState>>,
    UrlPath(subject): UrlPath<String>,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> (StatusCode, Json<serde_json::Value>) {
    if let Some(status) = *state.fail_with.lock().unwrap() {
        return (
            status,
            Json(json!({"error_code": 50001, "message": "boom"})),
        );
    }
    let schema = body["schema"].as_str().unwrap().to_owned();
    let content_type = headers
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    state
        .registered
        .lock()
        .unwrap()
        .push((subject, schema.clone(), content_type));
    let mut schemas = state.schemas.lock().unwrap();
    let id = match schemas.iter().find(|(_, s)| **s == schema) {
        Some((id, _)) => *id,
        None => {
            let id = 100 + u32::try_from(schemas.len()).unwrap();
            schemas.insert(id, schema);
            id
        }
    };
    (StatusCode::OK, Json(json!({ "id": id })))
}
