//! Events as stored and delivered, and the server-wide id sequence.
//!
//! Owns `Event` (immutable once built; shared as `Arc<Event>` between a
//! channel's ring and the answers that carry it) and `IdClock`, the sequence
//! that gives every event its id. Pure: no I/O, no threads; `hub/mod.rs` calls it
//! with the state lock held, so it must stay cheap.
//!
//! Ids are wall-clock microseconds, bumped to stay strictly increasing: a new
//! id is `max(last + 1, now_micros)`. A restarted server therefore starts
//! above every id the previous run handed out, as long as the clock has not
//! stepped back by more than the time between the two runs' last events.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Ids stay below 2^53 so that JavaScript numbers hold them exactly.
pub const MAX_EVENT_ID: u64 = (1 << 53) - 1;

/// One published event.
#[derive(Debug)]
pub struct Event {
    pub id: u64,
    /// When it was stored, for `--event-ttl`.
    pub stored_at: Instant,
    /// The whole event object, serialized once at publish time:
    /// `{"id":…,"channel":…,"timestamp":…,"data":…}`. Answers splice it in as is.
    pub json: Box<str>,
}

impl Event {
    /// Builds the event; `data_json` must be compact JSON (as `serde_json`
    /// writes it) and `channel` a valid channel name.
    pub fn new(
        id: u64,
        channel: &str,
        at: SystemTime,
        stored_at: Instant,
        data_json: &str,
    ) -> Arc<Event> {
        debug_assert!(crate::api::request::valid_channel_name(channel));
        let timestamp = humantime::format_rfc3339_millis(at);
        // Channel names and timestamps hold no character that JSON escapes.
        let json = format!(
            r#"{{"id":{id},"channel":"{channel}","timestamp":"{timestamp}","data":{data_json}}}"#
        );
        Arc::new(Event {
            id,
            stored_at,
            json: json.into_boxed_str(),
        })
    }

    /// Bytes this event counts against `--max-stored-bytes`: its JSON and
    /// what keeping it costs besides (`EVENT_OVERHEAD_BYTES`).
    pub fn stored_bytes(&self) -> usize {
        self.json.len() + EVENT_OVERHEAD_BYTES
    }
}

/// What a stored event costs besides its JSON, measured: the `Arc<Event>`
/// allocation (counts, `Event`, allocator header: 64 bytes), the allocator's
/// rounding of the JSON, its slot in the channel's ring and its entry in the
/// hub's age order (with the slack of those growing queues), and the
/// fragmentation of replacing events from several writer threads (two malloc
/// arenas). One-byte events (JSON of about 90 bytes) published from one
/// connection over 10 channels grew resident memory by 207 bytes an event;
/// from four connections over 100 channels, with the oldest dropped all the
/// while (`scripts/edge2-figures.py`, attack 12), by 342. The JSON plus this
/// is 346.
pub const EVENT_OVERHEAD_BYTES: usize = 256;

/// The id sequence shared by all channels.
#[derive(Debug, Default)]
pub struct IdClock {
    last_id: u64,
}

impl IdClock {
    /// The next id, or `None` once ids would pass `MAX_EVENT_ID` (year 2255).
    pub fn next_id(&mut self, now_micros: u64) -> Option<u64> {
        let id = now_micros.max(self.last_id + 1);
        if id > MAX_EVENT_ID {
            return None;
        }
        self.last_id = id;
        Some(id)
    }

    /// The largest id issued so far (0 if none).
    pub fn last_id(&self) -> u64 {
        self.last_id
    }

    /// Continues a sequence that already issued ids up to `id` (a store
    /// restoring what it kept): later ids are larger, whatever the clock says.
    pub fn raise_to(&mut self, id: u64) {
        self.last_id = self.last_id.max(id);
    }

    /// The largest id this server could have issued by now. A cursor above it
    /// did not come from this server (or the clock stepped back across a restart).
    pub fn horizon(&self, now_micros: u64) -> u64 {
        self.last_id.max(now_micros)
    }
}

/// Microseconds since the Unix epoch by the wall clock (0 before 1970).
pub fn wall_micros(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros().min(u64::MAX as u128) as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Ids follow the wall clock in microseconds but never repeat or go back when it stalls or steps back.
    #[test]
    fn ids_follow_the_clock_and_never_go_back() {
        let mut ids = IdClock::default();
        assert_eq!(ids.next_id(1_000), Some(1_000));
        assert_eq!(ids.next_id(1_000), Some(1_001), "same microsecond");
        assert_eq!(ids.next_id(500), Some(1_002), "clock stepped back");
        assert_eq!(ids.next_id(5_000), Some(5_000), "clock moved on");
        assert_eq!(ids.horizon(4_000), 5_000);
        assert_eq!(ids.horizon(9_000), 9_000);
    }

    /// A new process issues ids above the old one once the clock has moved on.
    #[test]
    fn a_restarted_sequence_starts_above_the_old_one() {
        let mut before = IdClock::default();
        let old = before.next_id(2_000_000).unwrap();
        let mut after = IdClock::default();
        assert!(after.next_id(2_000_001 + 10).unwrap() > old);
    }

    /// No id above 2^53 - 1 is ever issued.
    #[test]
    fn ids_stay_below_2_pow_53() {
        let mut ids = IdClock::default();
        assert_eq!(ids.next_id(MAX_EVENT_ID), Some(MAX_EVENT_ID));
        assert_eq!(ids.next_id(MAX_EVENT_ID), None);
    }

    /// The stored event object has id, channel, RFC 3339 millisecond timestamp and data.
    #[test]
    fn event_json_has_the_documented_shape() {
        let at = UNIX_EPOCH + Duration::from_millis(1_790_000_000_123);
        let ev = Event::new(7, "room-1", at, Instant::now(), r#"{"t":21.5}"#);
        let v: serde_json::Value = serde_json::from_str(&ev.json).unwrap();
        assert_eq!(v["id"], 7);
        assert_eq!(v["channel"], "room-1");
        assert_eq!(v["timestamp"], "2026-09-21T14:13:20.123Z");
        assert_eq!(v["data"]["t"], 21.5);
    }
}
