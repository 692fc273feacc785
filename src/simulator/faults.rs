//! The simulator's fault state besides the per-call rules of `rules`: the latency and rules in
//! force ([`Behaviour`]), scripted outages ([`OutageMode`]) and the body that drops a connection
//! mid-answer.
//!
//! Plain data: it never reads the clock, locks or answers anything itself (`state` and `routes`
//! do).

use std::time::Duration;

use super::rules::FaultRule;

#[derive(Debug)]
pub(super) struct Behaviour {
    pub(super) latency: Duration,
    pub(super) rules: Vec<FaultRule>,
}

/// A scripted outage: until `until`, calls fail as `mode` says.
#[derive(Debug, Clone, Copy)]
pub(super) struct Outage {
    pub(super) until: std::time::Instant,
    pub(super) mode: OutageMode,
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
pub(super) struct DroppedConnection;

impl tokio::io::AsyncRead for DroppedConnection {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Err(std::io::Error::other("simulated dropped connection")))
    }
}
