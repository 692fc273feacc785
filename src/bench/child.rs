//! Reading what a child `regnotify` process printed: its JSON result line and the tail of its
//! stderr for an error message. Shared by the demo scenarios and the service-alone run.

/// The last line of a child's output that is a JSON object, read as `T` (`None`: no such line).
pub(super) fn last_json_line<T: serde::de::DeserializeOwned>(
    stdout: &[u8],
) -> Option<serde_json::Result<T>> {
    String::from_utf8_lossy(stdout)
        .lines()
        .rev()
        .find(|line| line.starts_with('{'))
        .map(serde_json::from_str::<T>)
}

/// The last five lines of a child's stderr, on one line.
pub(super) fn stderr_tail(stderr: &[u8]) -> String {
    let stderr = String::from_utf8_lossy(stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
}
