//! Finished offsets beyond the committed one, carried in the offset commit's metadata string.
//!
//! With key ordering, events finish out of offset order: offset 100 may wait on a slow merchant
//! while 101–400 are done. The commit position stays at 100, so the next owner of the partition
//! (after a crash, a lost partition, a deploy that outran the drain) would call Alipay+ again for
//! all of 101–400. Each commit therefore also names, in its metadata, which offsets above the
//! position are finished (their outputs acknowledged, or committed in the same transaction), and
//! a new owner skips them.
//!
//! The format: `rn1:<position>:<kind><payload>`, where `rn1` is the version tag, `<position>` the
//! commit position the note belongs to (a note read beside another position is ignored), and the
//! payload, base64url without padding, is either
//! - `r`: run lengths from `<position>` on, alternately not finished and finished, each an
//!   unsigned LEB128 varint (compact when finished offsets come in long runs), or
//! - `b`: a bitset, bit `i` (least significant first) for offset `<position> + i` (compact when
//!   they are scattered).
//!
//! The shorter of the two is written. A note never exceeds [`MAX_NOTE_BYTES`] (under the broker's
//! default `offset.metadata.max.bytes` of 4,096): when the finished set does not fit, its highest
//! offsets are left out, which only means processing them again. Anything that cannot be read (no
//! tag, another version, another tool's metadata) skips nothing.

use std::collections::BTreeSet;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The version tag every note starts with.
const TAG: &str = "rn1";
/// The longest note written: well under the broker's default `offset.metadata.max.bytes` (4,096).
pub(crate) const MAX_NOTE_BYTES: usize = 3_900;
/// Above this many bytes the partition's intake is paused until the note shrinks again.
pub(crate) const NOTE_PRESSURE_BYTES: usize = MAX_NOTE_BYTES * 3 / 4;

/// More finished offsets than any partition window holds: a note naming more is damaged (and
/// would cost memory to read).
const MAX_FINISHED: i64 = 1_000_000;

/// Why a note was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NoteError {
    #[error("not a regnotify note (another tool's metadata, or a newer version)")]
    Foreign,
    #[error("the note is for commit position {note}, the committed offset is {committed}")]
    OtherPosition { note: i64, committed: i64 },
    #[error("the note is damaged: {0}")]
    Damaged(&'static str),
}

/// The note for commit `position` and the finished offsets above it (ascending, all above
/// `position`). Empty when nothing above the position is finished.
pub(crate) fn encode(position: i64, finished: &[i64]) -> String {
    let finished: Vec<i64> = finished.iter().copied().filter(|o| *o > position).collect();
    if finished.is_empty() {
        return String::new();
    }
    let note = encode_all(position, &finished);
    if note.len() <= MAX_NOTE_BYTES {
        return note;
    }
    // The largest prefix of the finished offsets that fits.
    let (mut fits, mut too_many) = (0, finished.len());
    while too_many - fits > 1 {
        let middle = fits + (too_many - fits) / 2;
        if encode_all(position, &finished[..middle]).len() <= MAX_NOTE_BYTES {
            fits = middle;
        } else {
            too_many = middle;
        }
    }
    if fits == 0 {
        return String::new();
    }
    encode_all(position, &finished[..fits])
}

/// The finished offsets a note names, given the committed offset it was read beside.
pub(crate) fn decode(note: &str, committed: i64) -> Result<BTreeSet<i64>, NoteError> {
    let rest = note
        .strip_prefix(TAG)
        .and_then(|rest| rest.strip_prefix(':'))
        .ok_or(NoteError::Foreign)?;
    let (position, body) = rest
        .split_once(':')
        .ok_or(NoteError::Damaged("no position"))?;
    let position: i64 = position
        .parse()
        .map_err(|_| NoteError::Damaged("position is not a number"))?;
    if position != committed {
        return Err(NoteError::OtherPosition {
            note: position,
            committed,
        });
    }
    let mut chars = body.chars();
    let kind = chars.next().ok_or(NoteError::Damaged("no payload"))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(chars.as_str())
        .map_err(|_| NoteError::Damaged("payload is not base64url"))?;
    let mut finished = BTreeSet::new();
    match kind {
        'r' => {
            let mut offset = position;
            let mut is_finished = false;
            let mut input = bytes.as_slice();
            while !input.is_empty() {
                let (run, rest) = read_varint(input).ok_or(NoteError::Damaged("bad run length"))?;
                input = rest;
                let run = i64::try_from(run).map_err(|_| NoteError::Damaged("run too long"))?;
                let end = offset
                    .checked_add(run)
                    .ok_or(NoteError::Damaged("run too long"))?;
                if is_finished {
                    if finished.len() as i64 + run > MAX_FINISHED {
                        return Err(NoteError::Damaged("more finished offsets than a window"));
                    }
                    finished.extend((offset..end).filter(|o| *o > position));
                }
                offset = end;
                is_finished = !is_finished;
            }
        }
        'b' => {
            for (index, byte) in bytes.iter().enumerate() {
                for bit in 0..8 {
                    if byte & (1 << bit) != 0 {
                        finished.insert(position + (index * 8 + bit) as i64);
                    }
                }
            }
        }
        _ => return Err(NoteError::Damaged("unknown payload kind")),
    }
    Ok(finished)
}

fn encode_all(position: i64, finished: &[i64]) -> String {
    let runs = run_lengths(position, finished);
    let bits = bitset(position, finished);
    let (kind, payload) = if runs.len() <= bits.len() {
        ('r', runs)
    } else {
        ('b', bits)
    };
    format!("{TAG}:{position}:{kind}{}", URL_SAFE_NO_PAD.encode(payload))
}

fn run_lengths(position: i64, finished: &[i64]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut next = position;
    let mut index = 0;
    while index < finished.len() {
        let start = finished[index];
        let mut end = start + 1;
        index += 1;
        while index < finished.len() && finished[index] == end {
            end += 1;
            index += 1;
        }
        write_varint(&mut out, (start - next) as u64);
        write_varint(&mut out, (end - start) as u64);
        next = end;
    }
    out
}

fn bitset(position: i64, finished: &[i64]) -> Vec<u8> {
    let Some(last) = finished.last() else {
        return Vec::new();
    };
    let mut bits = vec![0u8; ((last - position) / 8 + 1) as usize];
    for offset in finished {
        let index = (offset - position) as usize;
        bits[index / 8] |= 1 << (index % 8);
    }
    bits
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn read_varint(input: &[u8]) -> Option<(u64, &[u8])> {
    let mut value: u64 = 0;
    for (index, byte) in input.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Some((value, &input[index + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn a_note_round_trips_or_keeps_the_lowest_offsets_that_fit(
            position in 0i64..1_000_000_000,
            deltas in prop::collection::vec((0i64..40, prop::bool::ANY), 0..3_000),
        ) {
            let mut finished = Vec::new();
            let mut offset = position;
            for (gap, run) in deltas {
                offset += gap + 1;
                finished.push(offset);
                if run {
                    offset += 1;
                    finished.push(offset);
                }
            }
            let note = encode(position, &finished);
            prop_assert!(note.len() <= MAX_NOTE_BYTES);
            if finished.is_empty() {
                prop_assert!(note.is_empty());
                return Ok(());
            }
            let read = decode(&note, position).unwrap();
            let read: Vec<i64> = read.into_iter().collect();
            // Everything read was finished, and it is a prefix of the finished offsets.
            prop_assert_eq!(&read[..], &finished[..read.len()]);
            if encode_all(position, &finished).len() <= MAX_NOTE_BYTES {
                prop_assert_eq!(read.len(), finished.len());
            }
        }

        #[test]
        fn no_input_makes_decode_panic(note in ".{0,200}", committed in any::<i64>()) {
            let _ = decode(&note, committed);
        }
    }

    #[test]
    fn the_shorter_encoding_is_written() {
        // A long run: run lengths.
        let run: Vec<i64> = (101..=400).collect();
        let note = encode(100, &run);
        assert!(note.starts_with("rn1:100:r"), "{note}");
        assert!(note.len() < 20, "{note}");
        // Every other offset: a bitset.
        let scattered: Vec<i64> = (101..=400).step_by(2).collect();
        let note = encode(100, &scattered);
        assert!(note.starts_with("rn1:100:b"), "{note}");
        assert_eq!(decode(&note, 100).unwrap().len(), scattered.len());
    }

    #[test]
    fn foreign_or_misplaced_notes_skip_nothing() {
        assert_eq!(decode("", 5), Err(NoteError::Foreign));
        assert_eq!(
            decode("consumer-tool v2 checkpoint", 5),
            Err(NoteError::Foreign)
        );
        assert_eq!(decode("rn2:5:rAQE", 5), Err(NoteError::Foreign));
        let note = encode(5, &[7, 8]);
        assert_eq!(
            decode(&note, 6),
            Err(NoteError::OtherPosition {
                note: 5,
                committed: 6
            })
        );
        assert!(matches!(decode("rn1:5:x", 5), Err(NoteError::Damaged(_))));
        assert!(matches!(decode("rn1:5:r!!", 5), Err(NoteError::Damaged(_))));
        // A run of a billion finished offsets in a few bytes is refused, not allocated.
        let mut huge = Vec::new();
        write_varint(&mut huge, 0);
        write_varint(&mut huge, 1_000_000_000);
        let note = format!("rn1:5:r{}", URL_SAFE_NO_PAD.encode(huge));
        assert!(matches!(decode(&note, 5), Err(NoteError::Damaged(_))));
    }
}
