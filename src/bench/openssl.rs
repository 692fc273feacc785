//! OpenSSL's own RSA-2048 signing rate on this machine, as `openssl speed` measures it: the
//! reference our signer is held against. Runs the `openssl` program found on `PATH`; the service
//! itself never links or calls OpenSSL for signatures.

use std::process::Command;

use serde::{Deserialize, Serialize};

/// What `openssl speed rsa2048` reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct OpenSslSpeed {
    /// RSA-2048 signatures per second on one core.
    pub(crate) signs_per_second: f64,
    /// `openssl version`, as printed.
    pub(crate) version: String,
}

/// Runs `openssl speed -seconds <seconds> rsa2048` (one process, so one core); `Err` says why
/// there is no figure (no `openssl` on `PATH`, or output that could not be read).
pub(crate) fn measure(seconds: u64) -> Result<OpenSslSpeed, String> {
    let version = Command::new("openssl")
        .arg("version")
        .output()
        .map_err(|error| format!("openssl is not available: {error}"))?;
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    let output = Command::new("openssl")
        .args(["speed", "-seconds", &seconds.max(1).to_string(), "rsa2048"])
        .output()
        .map_err(|error| format!("openssl speed did not run: {error}"))?;
    if !output.status.success() {
        return Err(format!("openssl speed exited with {}", output.status));
    }
    let signs_per_second = parse_speed(&String::from_utf8_lossy(&output.stdout))
        .ok_or("no `rsa 2048 bits` line with a sign/s column in openssl speed's output")?;
    Ok(OpenSslSpeed {
        signs_per_second,
        version,
    })
}

/// The `sign/s` figure of the RSA-2048 line, located by the header line's column names:
/// ```text
///                   sign    verify    sign/s verify/s
/// rsa 2048 bits 0.000204s 0.000013s   4901.7  75732.7
/// ```
fn parse_speed(output: &str) -> Option<f64> {
    let mut header: Option<Vec<&str>> = None;
    for line in output.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.contains(&"sign/s") {
            header = Some(words);
            continue;
        }
        let Some(columns) = &header else { continue };
        if words.len() < 3 || words[0] != "rsa" || words[1] != "2048" || words[2] != "bits" {
            continue;
        }
        let index = columns.iter().position(|name| *name == "sign/s")?;
        return words.get(3 + index)?.parse().ok();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sign_rate_is_read_by_its_column_name() {
        let v3_0 = "Doing 2048 bits private rsa's for 3s: 14705 2048 bits private RSA's in 3.00s\n\
                    version: 3.0.19\n                  sign    verify    sign/s verify/s\n\
                    rsa 2048 bits 0.000204s 0.000013s   4901.7  75732.7\n";
        assert_eq!(parse_speed(v3_0), Some(4901.7));
        let v3_5 = "                   sign    verify    encrypt   decrypt   sign/s verify/s  encr./s  decr./s\n\
                    rsa  1024 bits 0.000080s 0.000005s 0.000005s 0.000080s  12500.0 200000.0 190000.0  12400.0\n\
                    rsa  2048 bits 0.000480s 0.000014s 0.000015s 0.000470s   2083.3  71428.6  66666.7   2127.7\n";
        assert_eq!(parse_speed(v3_5), Some(2083.3));
        assert_eq!(parse_speed("openssl: unknown algorithm\n"), None);
    }
}
