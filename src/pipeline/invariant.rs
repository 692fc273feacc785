//! Invariants that hold in release builds too: a count that would go below zero, or a state that
//! must not happen, is reported ([`crate::observe::invariant_broken`]: a metric, an ERROR line,
//! and `/readyz` failing from then on) instead of wrapping around or being ignored. Debug builds
//! (and so every test) still stop at the first one.

/// Subtracts `n` from `count`; a count that would go below zero stays at zero and is reported.
pub(crate) fn take(count: &mut usize, n: usize, check: &'static str) {
    match count.checked_sub(n) {
        Some(left) => *count = left,
        None => {
            broken(check, &format!("{n} taken from {count}"));
            *count = 0;
        }
    }
}

/// Reports `check` when `holds` is false; returns `holds`.
pub(crate) fn expect(holds: bool, check: &'static str) -> bool {
    if !holds {
        broken(check, "");
    }
    holds
}

fn broken(check: &'static str, detail: &str) {
    crate::observe::invariant_broken(check, detail);
    debug_assert!(false, "invariant {check} broken {detail}");
}

#[cfg(all(test, not(debug_assertions)))]
mod tests {
    use super::*;

    #[test]
    fn a_count_never_goes_below_zero() {
        let mut count = 1;
        take(&mut count, 2, "test_count");
        assert_eq!(count, 0);
    }
}

#[cfg(all(test, debug_assertions))]
mod tests {
    use super::*;

    #[test]
    fn a_count_goes_down_by_what_is_taken() {
        let mut count = 3;
        take(&mut count, 2, "test_count");
        assert_eq!(count, 1);
        assert!(expect(true, "test_check"));
    }

    #[test]
    #[should_panic(expected = "invariant test_count broken")]
    fn a_count_below_zero_stops_a_debug_build() {
        let mut count = 1;
        take(&mut count, 2, "test_count");
    }
}
