//! The HTTP API contract (issue 2, "HTTP API"), point by point, against the
//! real server on an ephemeral loopback port.
mod common;

use std::collections::{HashMap, HashSet};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use abide::Config;
use common::{Resp, TestServer};

/// The largest id a JavaScript number holds exactly.
const MAX_SAFE_ID: u64 = (1 << 53) - 1;

// ---------------------------------------------------------------- publishing

/// POST answers 201 with the stored event object, for every JSON type, and a poll delivers exactly that object.
#[test]
fn publish_answers_201_with_the_stored_event_for_every_json_type() {
    let server = common::start();
    let bodies = [
        r#"{"t":21.5,"tags":["a","b"],"nested":{"x":null,"y":[1,{"z":true}]}}"#,
        r#"[1,"two",3.5,false,null,[],{}]"#,
        r#""hello \"world\" ü \u00e9 \n""#,
        "42",
        "-3.25",
        "18446744073709551615",
        "true",
        "false",
        "null",
        "{}",
        "[]",
        "  [1, 2]\n",
    ];
    let mut previous = 0;
    for body in bodies {
        let before = SystemTime::now();
        let resp = server.post("/channels/types/events", body);
        let after = SystemTime::now();
        assert_eq!(resp.status, 201, "{body}: {resp:?}");
        assert_eq!(
            resp.header("content-type"),
            Some("application/json"),
            "{resp:?}"
        );
        let event = resp.json();
        let keys: HashSet<&str> = event
            .as_object()
            .expect("event object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            HashSet::from(["id", "channel", "timestamp", "data"]),
            "{event}"
        );
        let id = event["id"].as_u64().expect("integer id");
        assert!(
            id > previous && id <= MAX_SAFE_ID,
            "id {id} after {previous}"
        );
        assert_eq!(event["channel"], "types");
        let timestamp = event["timestamp"].as_str().expect("timestamp string");
        assert_rfc3339_utc_millis(timestamp);
        let earliest = rfc3339_millis(before - Duration::from_secs(2));
        let latest = rfc3339_millis(after + Duration::from_secs(2));
        assert!(
            earliest.as_str() <= timestamp && timestamp <= latest.as_str(),
            "timestamp {timestamp} is not the publish time ({earliest} .. {latest})"
        );
        let expected: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(event["data"], expected, "data of {body}");

        let polled = server.get(&format!(
            "/channels/types/events?last_event_id={previous}&timeout=0"
        ));
        assert_eq!(
            polled.json(),
            serde_json::json!([event]),
            "stored differs from delivered"
        );
        previous = id;
    }
}

/// An empty body, a body that is not JSON, or not UTF-8, is refused with 400 and a JSON error naming the body; nothing is stored.
#[test]
fn publish_refuses_empty_and_invalid_bodies_with_400() {
    let server = common::start();
    for body in ["", "   \n"] {
        let resp = server.post("/channels/bad/events", body);
        resp.assert_error(400, "empty");
    }
    for body in [
        "{",
        "nope",
        r#"{"a":1,}"#,
        "1 2",
        "[1]]",
        "'single'",
        "NaN",
        "{\"a\"}",
    ] {
        let resp = server.post("/channels/bad/events", body);
        resp.assert_error(400, "JSON");
    }
    let resp = send(
        &server,
        "POST",
        "/channels/bad/events",
        &[],
        b"\xff\xfe\"x\"",
    );
    resp.assert_error(400, "body");
    server.get("/channels/bad").assert_error(404, "");
    assert_eq!(server.stats()["events_published"], 0);
}

/// A body over --max-event-bytes is refused with 413 naming the limit (declared or chunked); one at the limit is stored.
#[test]
fn publish_over_max_event_bytes_is_413() {
    let server = common::start_with(Config {
        max_event_bytes: 16,
        ..common::config()
    });
    let at_limit = format!("\"{}\"", "x".repeat(14));
    assert_eq!(at_limit.len(), 16);
    let resp = server.post("/channels/sized/events", &at_limit);
    assert_eq!(resp.status, 201, "{resp:?}");

    let over = format!("\"{}\"", "x".repeat(15));
    server
        .post("/channels/big/events", &over)
        .assert_error(413, "--max-event-bytes");
    let huge = format!("\"{}\"", "x".repeat(10_000));
    server
        .post("/channels/big/events", &huge)
        .assert_error(413, "--max-event-bytes");

    // The same limit holds when the size is not declared up front.
    let chunk = format!("\"{}\"", "y".repeat(98));
    let request = format!(
        "POST /channels/big/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    let raw = common::raw(server.addr, request.as_bytes(), Duration::from_secs(20));
    assert_eq!(common::final_status(&raw), Some(413), "{raw}");
    assert!(raw.contains("--max-event-bytes"), "{raw}");

    server.get("/channels/big").assert_error(404, "");
    assert_eq!(server.stats()["events_published"], 1);
}

// ------------------------------------------------------------ channel names

/// Names of 1 to 64 ASCII letters, digits, '-', '_' and '.' are accepted on every route.
#[test]
fn channel_names_of_1_to_64_allowed_characters_work() {
    let server = common::start();
    let longest = "x".repeat(64);
    for name in [
        "a",
        "Z",
        "7",
        ".",
        "-",
        "_",
        "Sensor_1.temp-C",
        longest.as_str(),
    ] {
        let resp = server.post(&format!("/channels/{name}/events"), "1");
        assert_eq!(resp.status, 201, "{name}: {resp:?}");
        assert_eq!(resp.json()["channel"], name);
        let resp = server.get(&format!("/channels/{name}/events?timeout=0"));
        assert_eq!(resp.ids().len(), 1, "{name}");
        let resp = server.get(&format!("/events?channels={name}&timeout=0"));
        assert_eq!(resp.ids().len(), 1, "{name}");
        let resp = server.get(&format!("/channels/{name}"));
        assert_eq!(resp.status, 200, "{name}: {resp:?}");
        assert_eq!(resp.json()["channel"], name);
        assert_eq!(
            server.delete(&format!("/channels/{name}")).status,
            204,
            "{name}"
        );
    }
}

/// A name of 65 characters, with a space, or with any other character is refused with 400 on every route that takes one.
#[test]
fn invalid_channel_names_are_400_on_every_route() {
    let server = common::start();
    let too_long = "x".repeat(65);
    let bad = [
        too_long.as_str(),
        "a%20b",
        "%20",
        "a~b",
        "a!b",
        "a*b",
        "a:b",
        "a@b",
        "a+b",
        "a$b",
        "a'b",
        "a(b)",
        "a;b",
        "a=b",
        "a%2Fb",
        "a%00b",
        "%C3%A9t%C3%A9",
        "a%2Cb",
    ];
    for name in bad {
        server
            .post(&format!("/channels/{name}/events"), "1")
            .assert_error(400, "channel name");
        server
            .get(&format!("/channels/{name}/events?timeout=0"))
            .assert_error(400, "channel name");
        server
            .get(&format!("/channels/{name}"))
            .assert_error(400, "channel name");
        server
            .delete(&format!("/channels/{name}"))
            .assert_error(400, "channel name");
        // In a query, %2C decodes to the list separator.
        if name != "a%2Cb" {
            server
                .get(&format!("/events?channels=ok,{name}&timeout=0"))
                .assert_error(400, "channel name");
        }
    }
    // "a,b" is two good names in a list, but never one channel.
    server
        .post("/channels/a,b/events", "1")
        .assert_error(400, "channel name");
    // Empty names.
    server
        .post("/channels//events", "1")
        .assert_error(400, "channel name");
    server.get("/channels/").assert_error(400, "channel name");
    server
        .get("/events?channels=&timeout=0")
        .assert_error(400, "channel name");
    server
        .get("/events?channels=a,,b&timeout=0")
        .assert_error(400, "channel name");
    assert_eq!(server.stats()["events_published"], 0);
    assert_eq!(server.stats()["channels"], 0);
}

// --------------------------------------------------------------------- ids

/// Ids strictly increase across all channels, are unique under concurrent publishers, and stay below 2^53.
#[test]
fn event_ids_strictly_increase_across_channels_and_stay_below_2_pow_53() {
    let server = common::start();
    let mut ids = Vec::new();
    for i in 0..30 {
        let channel = ["red", "green", "blue"][i % 3];
        ids.push(server.publish(channel, &i.to_string()));
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert!(ids.iter().all(|&id| id <= MAX_SAFE_ID), "{ids:?}");
    // One cursor covers every channel: the merged poll returns them in publish order.
    let merged = server.get("/events?channels=red,green,blue&timeout=0");
    assert_eq!(merged.ids(), ids);

    let url = server.url("/channels/");
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let url = url.clone();
            thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into();
                (0..20)
                    .map(|i| {
                        let mut resp = agent
                            .post(format!("{url}p{p}/events"))
                            .send(format!("{i}"))
                            .expect("publish");
                        assert_eq!(resp.status(), 201);
                        let body: serde_json::Value =
                            serde_json::from_str(&resp.body_mut().read_to_string().unwrap())
                                .unwrap();
                        body["id"].as_u64().expect("id")
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut all = HashSet::new();
    for publisher in publishers {
        let mine = common::join_within(publisher, "publisher");
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "{mine:?}");
        for id in mine {
            assert!(id > ids[29] && id <= MAX_SAFE_ID, "{id}");
            assert!(all.insert(id), "id {id} issued twice");
        }
    }
    assert_eq!(all.len(), 80);
}

// ------------------------------------------------------------ the long poll

/// Events after the cursor are answered at once, as a JSON array ascending by id, marked no-store.
#[test]
fn poll_answers_events_after_the_cursor_at_once_ascending() {
    let server = common::start();
    let ids: Vec<u64> = (0..5)
        .map(|i| server.publish("c", &i.to_string()))
        .collect();
    let resp = get_guarded(&server, "/channels/c/events?timeout=60");
    assert_eq!(resp.ids(), ids, "no cursor means 0: everything held");
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    assert_eq!(resp.header("abide-missed"), None);
    let data: Vec<i64> = resp
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"].as_i64().unwrap())
        .collect();
    assert_eq!(data, [0, 1, 2, 3, 4]);

    let resp = get_guarded(
        &server,
        &format!("/channels/c/events?last_event_id={}&timeout=60", ids[1]),
    );
    assert_eq!(resp.ids(), ids[2..]);
    let resp = get_guarded(&server, "/channels/c/events?last_event_id=0&timeout=60");
    assert_eq!(resp.ids(), ids);
    // A cursor between two ids.
    let resp = server.get(&format!(
        "/channels/c/events?last_event_id={}&timeout=0",
        ids[3] - 1
    ));
    assert_eq!(resp.ids(), ids[3..]);
    // A cursor at the newest id: nothing new.
    let resp = server.get(&format!(
        "/channels/c/events?last_event_id={}&timeout=0",
        ids[4]
    ));
    assert_eq!(resp.status, 204, "{resp:?}");
}

/// The cursor is `last_event_id`, else the `Last-Event-ID` header, else 0.
#[test]
fn cursor_comes_from_the_parameter_then_the_header_then_zero() {
    let server = common::start();
    let ids: Vec<u64> = (0..4)
        .map(|i| server.publish("cur", &i.to_string()))
        .collect();
    let header_only = server.get_with_header(
        "/channels/cur/events?timeout=0",
        "Last-Event-ID",
        &ids[1].to_string(),
    );
    assert_eq!(header_only.ids(), ids[2..]);
    let both = server.get_with_header(
        &format!("/channels/cur/events?timeout=0&last_event_id={}", ids[2]),
        "Last-Event-ID",
        &ids[0].to_string(),
    );
    assert_eq!(both.ids(), ids[3..], "the parameter wins over the header");
    let neither = server.get("/channels/cur/events?timeout=0");
    assert_eq!(neither.ids(), ids);
    let merged = server.get_with_header(
        "/events?channels=cur&timeout=0",
        "Last-Event-ID",
        &ids[2].to_string(),
    );
    assert_eq!(merged.ids(), ids[3..]);
}

/// `limit` caps an answer at 1..=1000 events (default 100), oldest first; 0, 1001 and non-numbers are 400.
#[test]
fn limit_caps_each_answer() {
    let server = common::start();
    let ids: Vec<u64> = (0..101)
        .map(|i| server.publish("many", &i.to_string()))
        .collect();
    assert_eq!(
        server.get("/channels/many/events?timeout=0").ids(),
        ids[..100],
        "default 100"
    );
    assert_eq!(
        server.get("/channels/many/events?timeout=0&limit=1").ids(),
        ids[..1]
    );
    assert_eq!(
        server
            .get("/channels/many/events?timeout=0&limit=1000")
            .ids(),
        ids
    );
    let resp = server.get(&format!(
        "/channels/many/events?timeout=0&limit=3&last_event_id={}",
        ids[50]
    ));
    assert_eq!(resp.ids(), ids[51..54]);
    for bad in ["0", "1001", "-1", "x", "", "1.5", "99999999999999999999999"] {
        server
            .get(&format!("/channels/many/events?timeout=0&limit={bad}"))
            .assert_error(400, "limit");
        server
            .get(&format!("/events?channels=many&timeout=0&limit={bad}"))
            .assert_error(400, "limit");
    }
}

/// `timeout=0` answers at once: 204 with an empty body when nothing is new, 200 when something is; it never takes a wait slot.
#[test]
fn timeout_zero_answers_at_once() {
    let server = common::start();
    let resp = server.get("/channels/short/events?timeout=0");
    assert_eq!(resp.status, 204, "{resp:?}");
    assert!(resp.body.is_empty());
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    assert_eq!(resp.header("abide-missed"), None);
    let resp = server.get("/events?channels=short,other&timeout=0");
    assert_eq!(resp.status, 204, "{resp:?}");
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    let id = server.publish("short", "1");
    assert_eq!(server.get("/channels/short/events?timeout=0").ids(), [id]);
    let stats = server.stats();
    assert_eq!(stats["peak_waiters"], 0, "{stats}");
    assert_eq!(stats["polls_timed_out"], 0, "{stats}");
}

/// A poll with nothing new holds until an event arrives, then answers 200 with it.
#[test]
fn a_poll_with_nothing_new_waits_for_an_event() {
    let server = common::start();
    let old = server.publish("hold", "\"old\"");
    let poll = server.spawn_get(&format!(
        "/channels/hold/events?last_event_id={old}&timeout=60"
    ));
    server.wait_for_stat("waiters", |n| n == 1);
    assert!(!poll.is_finished(), "answered without an event");
    assert_eq!(server.get("/channels/hold").json()["waiters"], 1);
    let id = server.publish("hold", "\"new\"");
    let resp = common::join_within(poll, "woken poll");
    assert_eq!(resp.ids(), [id]);
    assert_eq!(resp.json()[0]["data"], "new");
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    assert_eq!(resp.header("abide-missed"), None);
    server.wait_for_stat("waiters", |n| n == 0);
}

/// With no `timeout`, a poll holds for --default-timeout, then answers 204 (never earlier), counted as timed out.
#[test]
fn a_poll_without_timeout_gets_204_after_the_default_timeout() {
    let server = common::start_with(quick());
    let begun = Instant::now();
    let resp = get_guarded(&server, "/channels/quiet/events");
    let held = begun.elapsed();
    assert_eq!(resp.status, 204, "{resp:?}");
    assert!(resp.body.is_empty());
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    assert_eq!(resp.header("abide-missed"), None);
    assert!(held >= Duration::from_secs(1), "answered after {held:?}");
    server.wait_for_stat("polls_timed_out", |n| n == 1);
    server.wait_for_stat("waiters", |n| n == 0);
}

/// A `timeout` above --max-timeout is clamped to it: `timeout=999` with a 1 s maximum answers 204 after about 1 s.
#[test]
fn a_timeout_above_the_maximum_is_clamped() {
    let server = common::start_with(quick());
    for path in [
        "/channels/quiet/events?timeout=999",
        "/events?channels=q1,q2&timeout=999",
    ] {
        let begun = Instant::now();
        let resp = get_guarded(&server, path);
        let held = begun.elapsed();
        assert_eq!(resp.status, 204, "{path}: {resp:?}");
        assert!(
            held >= Duration::from_secs(1),
            "{path}: answered after {held:?}"
        );
    }
    server.wait_for_stat("polls_timed_out", |n| n == 2);
}

/// The hold of a timed-out poll (timeout plus jitter) is never shorter than its timeout, for polls that start together.
#[test]
fn a_hold_is_never_shorter_than_the_timeout() {
    let server = common::start_with(quick());
    let begun = Instant::now();
    let polls: Vec<_> = (0..6)
        .map(|i| {
            if i % 2 == 0 {
                server.spawn_get(&format!("/channels/jit{i}/events?timeout=1"))
            } else {
                server.spawn_get(&format!("/events?channels=jit{i},jitx&timeout=1"))
            }
        })
        .collect();
    for poll in polls {
        let resp = common::join_within(poll, "jittered poll");
        assert_eq!(resp.status, 204, "{resp:?}");
        let held = begun.elapsed();
        assert!(held >= Duration::from_secs(1), "answered after {held:?}");
    }
}

/// Bad `last_event_id`, `Last-Event-ID`, `timeout` or `limit` values are 400 naming the parameter, on both poll routes.
#[test]
fn bad_poll_parameters_are_400_naming_the_parameter() {
    let server = common::start();
    for route in ["/channels/p/events?", "/events?channels=p&"] {
        for bad in [
            "-1",
            "abc",
            "1.5",
            "",
            "%2B1",
            "0x10",
            "1e3",
            "18446744073709551616",
        ] {
            server
                .get(&format!("{route}last_event_id={bad}&timeout=0"))
                .assert_error(400, "last_event_id");
        }
        for bad in ["-1", "abc", "1.5", "", "1s", "99999999999999999999999"] {
            server
                .get(&format!("{route}timeout={bad}"))
                .assert_error(400, "timeout");
        }
        for bad in ["-1", "abc", "", "1.5"] {
            server
                .get_with_header(&format!("{route}timeout=0"), "Last-Event-ID", bad)
                .assert_error(400, "Last-Event-ID");
        }
        server
            .get(&format!("{route}timeout=0&timeout=1"))
            .assert_error(400, "timeout");
        server
            .get(&format!("{route}timeout=0&last_event_id=1&last_event_id=2"))
            .assert_error(400, "last_event_id");
    }
    assert_eq!(server.stats()["peak_waiters"], 0);
}

// ------------------------------------------------------------------ missed

/// After a buffer overflow, a cursor before the dropped events gets the newest events plus `Abide-Missed: true`; a cursor at or after them does not.
#[test]
fn overflow_marks_older_cursors_missed() {
    let server = common::start_with(Config {
        buffer_events: 3,
        ..common::config()
    });
    let ids: Vec<u64> = (0..5)
        .map(|i| server.publish("ring", &i.to_string()))
        .collect();
    let resp = server.get("/channels/ring/events?last_event_id=0&timeout=0");
    assert_eq!(resp.ids(), ids[2..]);
    assert_eq!(resp.header("abide-missed"), Some("true"));
    assert_eq!(resp.header("cache-control"), Some("no-store"));

    let resp = server.get(&format!(
        "/channels/ring/events?last_event_id={}&timeout=0",
        ids[0]
    ));
    assert_eq!(resp.ids(), ids[2..]);
    assert_eq!(
        resp.header("abide-missed"),
        Some("true"),
        "event {} was dropped",
        ids[1]
    );

    for cursor in [ids[1], ids[2], ids[3]] {
        let resp = server.get(&format!(
            "/channels/ring/events?last_event_id={cursor}&timeout=0"
        ));
        assert_eq!(
            resp.header("abide-missed"),
            None,
            "cursor {cursor}: {resp:?}"
        );
        assert!(resp.ids().iter().all(|&id| id > cursor));
    }
    let resp = server.get(&format!(
        "/channels/ring/events?last_event_id={}&timeout=0",
        ids[4]
    ));
    assert_eq!(resp.status, 204, "{resp:?}");
    assert_eq!(resp.header("abide-missed"), None);

    // Also on the multi-channel route, and with a limit.
    server.publish("calm", "0");
    let resp = server.get("/events?channels=calm,ring&timeout=0");
    assert_eq!(resp.header("abide-missed"), Some("true"));
    let resp = server.get("/channels/ring/events?timeout=0&limit=1");
    assert_eq!(resp.ids(), ids[2..3]);
    assert_eq!(resp.header("abide-missed"), Some("true"));

    let info = server.get("/channels/ring").json();
    assert_eq!(info["oldest_event_id"], ids[2]);
    assert_eq!(info["last_event_id"], ids[4]);
    assert_eq!(info["events"], 3);
}

/// Events dropped by --event-ttl mark a poll from before them `Abide-Missed: true` (the channel kept alive by a waiter).
#[test]
fn events_dropped_by_age_mark_older_cursors_missed() {
    let server = common::start_with(Config {
        event_ttl: Some(Duration::from_secs(1)),
        ..common::config()
    });
    let first = server.publish("aging", "1");
    // A waiter keeps the channel while its only event ages out.
    let waiter = server.spawn_get(&format!(
        "/channels/aging/events?last_event_id={first}&timeout=60"
    ));
    server.wait_for_stat("waiters", |n| n == 1);
    common::wait_until("the event to age out", || {
        let resp = server.get("/channels/aging");
        resp.status == 200 && resp.json()["events"] == 0
    });
    let resp = server.get("/channels/aging/events?last_event_id=0&timeout=0");
    assert_eq!(resp.status, 204, "{resp:?}");
    assert_eq!(resp.header("abide-missed"), Some("true"), "{resp:?}");
    let resp = server.get("/events?channels=aging,fresh&timeout=0");
    assert_eq!(resp.header("abide-missed"), Some("true"), "{resp:?}");
    let resp = server.get(&format!(
        "/channels/aging/events?last_event_id={first}&timeout=0"
    ));
    assert_eq!(resp.status, 204, "{resp:?}");
    assert_eq!(
        resp.header("abide-missed"),
        None,
        "the cursor had the dropped event"
    );
    assert_eq!(server.delete("/channels/aging").status, 204);
    assert_eq!(common::join_within(waiter, "waiter").status, 410);
}

/// A channel whose events all aged out (and so is gone, 404) still marks a cursor from before them `Abide-Missed: true`.
#[test]
fn a_channel_emptied_by_age_still_marks_older_cursors_missed() {
    let server = common::start_with(Config {
        event_ttl: Some(Duration::from_secs(1)),
        ..common::config()
    });
    let first = server.publish("aging", "1");
    common::wait_until("the channel to age out", || {
        server.get("/channels/aging").status == 404
    });
    // A client whose cursor is before `first` never saw it.
    let cursor = first - 1;
    let empty = server.get(&format!(
        "/channels/aging/events?last_event_id={cursor}&timeout=0"
    ));
    assert_eq!(empty.status, 204, "{empty:?}");
    let second = server.publish("aging", "2");
    let next = server.get(&format!(
        "/channels/aging/events?last_event_id={cursor}&timeout=0"
    ));
    if next.status == 200 {
        assert_eq!(next.ids(), [second]);
    }
    assert_eq!(
        (empty.header("abide-missed"), next.header("abide-missed")),
        (Some("true"), Some("true")),
        "event {first} after cursor {cursor} was dropped by age before these polls could get it: \
         {empty:?} {next:?}"
    );
}

/// A cursor above any id the server could have issued (2^53-1, u64::MAX) is answered at once with everything held, or 204, marked missed.
#[test]
fn a_cursor_beyond_any_issued_id_is_answered_at_once_and_marked_missed() {
    let server = common::start();
    for cursor in [MAX_SAFE_ID, u64::MAX] {
        let resp = get_guarded(
            &server,
            &format!("/channels/future/events?last_event_id={cursor}&timeout=60"),
        );
        assert_eq!(resp.status, 204, "{resp:?}");
        assert_eq!(resp.header("abide-missed"), Some("true"));
        assert_eq!(resp.header("cache-control"), Some("no-store"));
    }
    let a = server.publish("future", "1");
    let b = server.publish("past", "2");
    let resp = get_guarded(
        &server,
        &format!("/channels/future/events?last_event_id={MAX_SAFE_ID}&timeout=60"),
    );
    assert_eq!(resp.ids(), [a]);
    assert_eq!(resp.header("abide-missed"), Some("true"));
    let url = server.url("/events?channels=future,past,empty&timeout=60");
    let poll = thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let resp = agent
            .get(url)
            .header("Last-Event-ID", MAX_SAFE_ID.to_string())
            .call()
            .expect("poll");
        common::read_resp(resp)
    });
    let resp = common::join_within(poll, "future cursor on /events");
    assert_eq!(resp.ids(), [a, b]);
    assert_eq!(resp.header("abide-missed"), Some("true"));
    assert_eq!(
        server.stats()["peak_waiters"],
        0,
        "no future-cursor poll waited"
    );
}

/// A cursor from before a restart is not answered at once by the new server; it gets the next event, whose id is above the cursor.
#[test]
fn a_cursor_from_before_a_restart_waits_for_the_next_event() {
    let first = common::start();
    let old = first.publish("persist", "\"before\"");
    first.stop();

    let second = common::start();
    let poll = second.spawn_get(&format!(
        "/channels/persist/events?last_event_id={old}&timeout=60"
    ));
    second.wait_for_stat("waiters", |n| n == 1);
    assert!(!poll.is_finished(), "the old cursor was answered at once");
    let resp = second.get(&format!(
        "/channels/persist/events?last_event_id={old}&timeout=0"
    ));
    assert_eq!(resp.status, 204, "{resp:?}");
    let new = second.publish("persist", "\"after\"");
    assert!(new > old, "new id {new} is not above the old cursor {old}");
    let resp = common::join_within(poll, "poll with an old cursor");
    assert_eq!(resp.ids(), [new]);
    assert_eq!(resp.json()[0]["data"], "after");
}

// ------------------------------------------------------ multi-channel polls

/// `/events?channels=a,b,c` merges the channels' events ascending by id, applies `limit` across them, and ignores other channels.
#[test]
fn multi_channel_poll_merges_ascending_with_limit_across_channels() {
    let server = common::start();
    let mut ids = Vec::new();
    let mut channel_of = HashMap::new();
    for i in 0..12 {
        let channel = ["a", "b", "c", "noise"][i % 4];
        let id = server.publish(channel, &i.to_string());
        if channel != "noise" {
            ids.push(id);
            channel_of.insert(id, channel);
        }
    }
    let resp = get_guarded(&server, "/events?channels=a,b,c&timeout=60");
    assert_eq!(resp.ids(), ids);
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    for event in resp.json().as_array().unwrap() {
        let id = event["id"].as_u64().unwrap();
        assert_eq!(event["channel"], channel_of[&id]);
    }
    // Order of names in the list does not matter; duplicates do not duplicate events.
    assert_eq!(server.get("/events?channels=c,a,b,a&timeout=0").ids(), ids);
    assert_eq!(
        server.get("/events?channels=a,b,c&timeout=0&limit=4").ids(),
        ids[..4]
    );
    let resp = server.get(&format!(
        "/events?channels=a,b,c&timeout=0&limit=2&last_event_id={}",
        ids[3]
    ));
    assert_eq!(resp.ids(), ids[4..6]);
    let resp = server.get(&format!(
        "/events?channels=a,b,c&timeout=0&last_event_id={}",
        ids[8]
    ));
    assert_eq!(resp.status, 204, "{resp:?}");
}

/// `/events` takes up to 32 channels; 33, a missing or an empty `channels` is 400 naming `channels`.
#[test]
fn multi_channel_poll_takes_up_to_32_channels() {
    let server = common::start();
    let names: Vec<String> = (0..33).map(|i| format!("ch{i}")).collect();
    let id = server.publish("ch31", "31");
    let resp = server.get(&format!(
        "/events?channels={}&timeout=0",
        names[..32].join(",")
    ));
    assert_eq!(resp.ids(), [id]);
    server
        .get(&format!("/events?channels={}&timeout=0", names.join(",")))
        .assert_error(400, "channels");
    server.get("/events").assert_error(400, "channels");
    server
        .get("/events?timeout=0")
        .assert_error(400, "channels");
    server
        .get("/events?channel=ch31&timeout=0")
        .assert_error(400, "channels");
}

/// A poll on several channels is woken by a publish on any one of them.
#[test]
fn multi_channel_poll_is_woken_by_any_of_its_channels() {
    let server = common::start();
    let mut cursor = server.publish("unrelated", "0");
    for target in ["x", "y", "z"] {
        let poll = server.spawn_get(&format!(
            "/events?channels=x,y,z&last_event_id={cursor}&timeout=60"
        ));
        server.wait_for_stat("waiters", |n| n == 1);
        server.publish("unrelated", "1");
        assert!(!poll.is_finished(), "woken by a channel it does not watch");
        let id = server.publish(target, &format!("\"{target}\""));
        let resp = common::join_within(poll, target);
        assert_eq!(resp.ids(), [id], "woken by {target}");
        assert_eq!(resp.json()[0]["channel"], target);
        server.wait_for_stat("waiters", |n| n == 0);
        cursor = id;
    }
}

/// A publish on channel a answers a's waiter while b's waiter keeps waiting.
#[test]
fn a_publish_wakes_only_the_waiters_of_its_channel() {
    let server = common::start();
    let on_a = server.spawn_get("/channels/a/events?timeout=60");
    let on_b = server.spawn_get("/channels/b/events?timeout=60");
    let on_ab = server.spawn_get("/events?channels=a,c&timeout=60");
    server.wait_for_stat("waiters", |n| n == 3);
    let id = server.publish("a", "\"for a\"");
    assert_eq!(common::join_within(on_a, "a's waiter").ids(), [id]);
    assert_eq!(common::join_within(on_ab, "a+c's waiter").ids(), [id]);
    server.wait_for_stat("waiters", |n| n == 1);
    assert!(
        !on_b.is_finished(),
        "b's waiter was answered by a publish on a"
    );
    let info = server.get("/channels/b").json();
    assert_eq!(info["waiters"], 1, "{info}");
    assert_eq!(server.get("/channels/a").json()["waiters"], 0);
    let id_b = server.publish("b", "\"for b\"");
    assert_eq!(common::join_within(on_b, "b's waiter").ids(), [id_b]);
}

// -------------------------------------------------------- channel resources

/// GET /channels/{name} reports channel, last_event_id, oldest_event_id, events and waiters; 404 JSON when it holds nothing and nobody waits.
#[test]
fn channel_info_reports_its_figures_or_404() {
    let server = common::start();
    server.get("/channels/info").assert_error(404, "info");
    let ids: Vec<u64> = (0..3)
        .map(|i| server.publish("info", &i.to_string()))
        .collect();
    let resp = server.get("/channels/info");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let info = resp.json();
    assert_eq!(info["channel"], "info");
    assert_eq!(info["last_event_id"], ids[2]);
    assert_eq!(info["oldest_event_id"], ids[0]);
    assert_eq!(info["events"], 3);
    assert_eq!(info["waiters"], 0);

    let poll = server.spawn_get(&format!(
        "/channels/info/events?last_event_id={}&timeout=60",
        ids[2]
    ));
    server.wait_for_stat("waiters", |n| n == 1);
    assert_eq!(server.get("/channels/info").json()["waiters"], 1);

    // A channel with a waiter but no events exists.
    let lonely = server.spawn_get("/channels/lonely/events?timeout=60");
    server.wait_for_stat("waiters", |n| n == 2);
    let resp = server.get("/channels/lonely");
    assert_eq!(resp.status, 200, "{resp:?}");
    let info = resp.json();
    assert_eq!(info["events"], 0);
    assert_eq!(info["waiters"], 1);
    assert!(
        info["last_event_id"].is_null() && info["oldest_event_id"].is_null(),
        "{info}"
    );

    let id = server.publish("info", "3");
    assert_eq!(common::join_within(poll, "info waiter").ids(), [id]);
    let id = server.publish("lonely", "4");
    assert_eq!(common::join_within(lonely, "lonely waiter").ids(), [id]);
}

/// DELETE answers 204 and drops the channel's events; its waiters get 410 Gone at once; other channels are untouched.
#[test]
fn delete_drops_events_and_answers_waiters_410() {
    let server = common::start();
    let old: Vec<u64> = (0..2)
        .map(|i| server.publish("doomed", &i.to_string()))
        .collect();
    let resp = server.delete("/channels/doomed");
    assert_eq!(resp.status, 204, "{resp:?}");
    assert!(resp.body.is_empty());
    let resp = server.get("/channels/doomed/events?last_event_id=0&timeout=0");
    assert_eq!(resp.status, 204, "{resp:?}");
    server.get("/channels/doomed").assert_error(404, "");

    let waiter = server.spawn_get("/channels/doomed/events?timeout=60");
    let merged = server.spawn_get("/events?channels=doomed,kept&timeout=60");
    let bystander = server.spawn_get("/channels/kept/events?timeout=60");
    server.wait_for_stat("waiters", |n| n == 3);
    assert_eq!(server.delete("/channels/doomed").status, 204);
    let resp = common::join_within(waiter, "waiter on a deleted channel");
    resp.assert_error(410, "doomed");
    let resp = common::join_within(merged, "multi-channel waiter on a deleted channel");
    resp.assert_error(410, "doomed");
    server.wait_for_stat("waiters", |n| n == 1);
    assert!(
        !bystander.is_finished(),
        "a waiter on another channel was answered"
    );
    assert_eq!(server.get("/channels/kept").json()["waiters"], 1);

    // The name can be used again; only the new event is held.
    let new = server.publish("doomed", "\"again\"");
    assert!(new > old[1]);
    assert_eq!(server.get("/channels/doomed/events?timeout=0").ids(), [new]);
    // Deleting a channel that does not exist is not an error.
    assert_eq!(server.delete("/channels/never-was").status, 204);
    let id = server.publish("kept", "1");
    assert_eq!(common::join_within(bystander, "bystander").ids(), [id]);
}

// ------------------------------------------------------ health, stats, metrics

/// GET /healthz answers 200.
#[test]
fn healthz_answers_200() {
    let server = common::start();
    let resp = server.get("/healthz");
    assert_eq!(resp.status, 200, "{resp:?}");
}

/// GET /stats reports every documented figure, and each moves as publishes, polls, waits and timeouts happen.
#[test]
fn stats_report_and_track_the_documented_figures() {
    let server = common::start_with(Config {
        max_waiters: 7,
        ..common::config()
    });
    let stats = server.stats();
    for field in [
        "waiters",
        "max_waiters",
        "peak_waiters",
        "channels",
        "events_published",
        "events_delivered",
        "polls_timed_out",
        "polls_rejected",
        "uptime_seconds",
    ] {
        assert!(
            stats[field].is_u64(),
            "{field} missing or not a count: {stats}"
        );
    }
    assert_eq!(stats["max_waiters"], 7);
    for field in [
        "waiters",
        "peak_waiters",
        "channels",
        "events_published",
        "events_delivered",
    ] {
        assert_eq!(stats[field], 0, "{field}: {stats}");
    }

    let first = server.publish("s", "1");
    let second = server.publish("t", "2");
    let stats = server.stats();
    assert_eq!(stats["events_published"], 2);
    assert_eq!(stats["channels"], 2);
    assert_eq!(
        server.get("/events?channels=s,t&timeout=0").ids(),
        [first, second]
    );
    server.wait_for_stat("events_delivered", |n| n == 2);

    let polls: Vec<_> = (0..2)
        .map(|_| {
            server.spawn_get(&format!(
                "/channels/s/events?last_event_id={second}&timeout=60"
            ))
        })
        .collect();
    server.wait_for_stat("waiters", |n| n == 2);
    assert_eq!(server.stats()["peak_waiters"], 2);
    let third = server.publish("s", "3");
    for poll in polls {
        assert_eq!(common::join_within(poll, "waiter").ids(), [third]);
    }
    server.wait_for_stat("events_delivered", |n| n == 4);
    server.wait_for_stat("waiters", |n| n == 0);
    let stats = server.stats();
    assert_eq!(stats["peak_waiters"], 2, "the peak stays");
    assert_eq!(stats["events_published"], 3);

    let resp = get_guarded(
        &server,
        &format!("/channels/s/events?last_event_id={third}&timeout=1"),
    );
    assert_eq!(resp.status, 204);
    server.wait_for_stat("polls_timed_out", |n| n == 1);
    assert_eq!(server.stats()["polls_rejected"], 0);
    server.delete("/channels/s");
    server.delete("/channels/t");
    server.wait_for_stat("channels", |n| n == 0);
}

/// GET /metrics is Prometheus text: every sample is abide_-prefixed with HELP and TYPE lines, and its values match /stats.
#[test]
fn metrics_are_prometheus_text_matching_stats() {
    let server = common::start_with(Config {
        max_waiters: 5,
        ..common::config()
    });
    let a = server.publish("m", "1");
    server.publish("n", "2");
    assert_eq!(server.get("/channels/m/events?timeout=0").ids(), [a]);
    server.wait_for_stat("events_delivered", |n| n == 1);
    let waiter = server.spawn_get("/channels/w/events?timeout=60");
    server.wait_for_stat("waiters", |n| n == 1);

    let stats = server.stats();
    let resp = server.get("/metrics");
    assert_eq!(resp.status, 200, "{resp:?}");
    let content_type = resp.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let mut helps = HashSet::new();
    let mut types = HashMap::new();
    let mut samples = HashMap::new();
    for line in resp.body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split_whitespace().next().expect("HELP names a metric");
            helps.insert(name.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let name = words.next().expect("TYPE names a metric").to_string();
            let kind = words.next().expect("TYPE gives a kind").to_string();
            types.insert(name, kind);
        } else if !line.trim().is_empty() && !line.starts_with('#') {
            let (name, value) = line
                .split_once(' ')
                .unwrap_or_else(|| panic!("bad sample {line:?}"));
            let value: f64 = value
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("bad value {line:?}"));
            samples.insert(name.to_string(), value);
        }
    }
    assert!(!samples.is_empty(), "{}", resp.body);
    for sample in samples.keys() {
        // A labelled sample (`name{reason="x"}`) shares its family's HELP and TYPE.
        let name = sample.split('{').next().expect("a name");
        assert!(name.starts_with("abide_"), "{name} lacks the abide_ prefix");
        assert!(helps.contains(name), "{name} has no HELP line");
        let kind = types
            .get(name)
            .unwrap_or_else(|| panic!("{name} has no TYPE line"));
        assert!(
            ["gauge", "counter"].contains(&kind.as_str()),
            "{name}: {kind}"
        );
        if kind == "counter" {
            assert!(
                name.ends_with("_total"),
                "counter {name} should end in _total"
            );
        }
    }
    for field in [
        "waiters",
        "max_waiters",
        "peak_waiters",
        "channels",
        "events_published",
        "events_delivered",
        "polls_timed_out",
        "polls_rejected",
    ] {
        let value = samples
            .get(&format!("abide_{field}"))
            .or_else(|| samples.get(&format!("abide_{field}_total")))
            .unwrap_or_else(|| panic!("no metric for {field}: {}", resp.body));
        assert_eq!(*value, stats[field].as_u64().unwrap() as f64, "{field}");
    }
    for reason in [
        "unauthenticated",
        "forbidden",
        "client_waiters",
        "publish_rate",
    ] {
        let sample = format!("abide_requests_refused_total{{reason=\"{reason}\"}}");
        let value = samples
            .get(&sample)
            .unwrap_or_else(|| panic!("no {sample}: {}", resp.body));
        assert_eq!(
            *value,
            stats["requests_refused"][reason].as_u64().unwrap() as f64,
            "{reason}"
        );
    }
    let uptime = samples.get("abide_uptime_seconds").expect("uptime metric");
    assert!(*uptime >= stats["uptime_seconds"].as_u64().unwrap() as f64);
    assert_eq!(samples["abide_waiters"], 1.0);
    assert_eq!(samples["abide_max_waiters"], 5.0);
    server.publish("w", "3");
    assert_eq!(common::join_within(waiter, "waiter").status, 200);
}

// ---------------------------------------------------------- routes, methods

/// An unknown path is 404 with a JSON error, whatever the method.
#[test]
fn unknown_paths_are_404_json() {
    let server = common::start_with(Config {
        demo: false,
        ..common::config()
    });
    for path in [
        "/",
        "/nope",
        "/channels",
        "/channels/a/events/extra",
        "/channels/a/b",
        "/events/x",
        "/healthz/x",
        "/stats/",
        "/Channels/a/events",
    ] {
        server.get(path).assert_error(404, "");
        server.post(path, "1").assert_error(404, "");
        server.delete(path).assert_error(404, "");
    }
}

/// The demo page is served at `/` unless `--no-demo` (checked above) turns it off.
#[test]
fn the_demo_page_is_served_at_the_root() {
    let server = common::start();
    let resp = server.get("/");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(
        resp.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(resp.body.contains("<html"), "{}", resp.body);
    server.post("/", "1").assert_error(405, "GET");
}

/// A known path with the wrong method is 405 with a JSON error and an `Allow` header listing the right methods.
#[test]
fn wrong_methods_are_405_with_allow() {
    let server = common::start();
    let cases: [(&str, &str, &[&str]); 12] = [
        ("PUT", "/channels/a/events", &["GET", "POST"]),
        ("DELETE", "/channels/a/events", &["GET", "POST"]),
        ("PATCH", "/channels/a/events", &["GET", "POST"]),
        ("POST", "/channels/a", &["GET", "DELETE"]),
        ("PUT", "/channels/a", &["GET", "DELETE"]),
        ("POST", "/events?channels=a", &["GET"]),
        ("DELETE", "/events", &["GET"]),
        ("POST", "/healthz", &["GET"]),
        ("DELETE", "/stats", &["GET"]),
        ("POST", "/stats", &["GET"]),
        ("POST", "/metrics", &["GET"]),
        ("PUT", "/metrics", &["GET"]),
    ];
    for (method, path, allowed) in cases {
        let body: &[u8] = if matches!(method, "POST" | "PUT" | "PATCH") {
            b"1"
        } else {
            b""
        };
        let resp = send(&server, method, path, &[], body);
        resp.assert_error(405, "");
        let allow = resp
            .header("allow")
            .unwrap_or_else(|| panic!("{method} {path}: no Allow header: {resp:?}"));
        let listed: Vec<&str> = allow.split(',').map(str::trim).collect();
        for method in allowed {
            assert!(
                listed.contains(method),
                "{path}: Allow {allow:?} lacks {method}"
            );
        }
        assert!(
            !listed.contains(&method),
            "{method} {path}: Allow {allow:?} lists the refused method"
        );
    }
    assert_eq!(server.stats()["events_published"], 0);
}

// ---------------------------------------------------------------- the cap

/// At --max-waiters, a poll that would wait gets 503 with Retry-After and a JSON error naming --max-waiters, while immediate polls still work.
#[test]
fn the_waiter_cap_refuses_only_polls_that_would_wait() {
    let server = common::start_with(Config {
        max_waiters: 3,
        ..common::config()
    });
    let ready = server.publish("ready", "\"ready\"");
    let held: Vec<_> = (0..3)
        .map(|_| server.spawn_get("/channels/full/events?timeout=60"))
        .collect();
    server.wait_for_stat("waiters", |n| n == 3);

    for path in [
        "/channels/full/events?timeout=60",
        "/channels/other/events?timeout=60",
        "/events?channels=full,other&timeout=60",
        &format!("/channels/ready/events?last_event_id={ready}&timeout=60"),
    ] {
        let resp = get_guarded(&server, path);
        resp.assert_error(503, "--max-waiters");
        let retry: u64 = resp
            .header("retry-after")
            .unwrap_or_else(|| panic!("{path}: no Retry-After: {resp:?}"))
            .parse()
            .expect("Retry-After in seconds");
        assert!(retry >= 1, "{retry}");
    }
    server.wait_for_stat("polls_rejected", |n| n == 4);

    // Answerable at once: still served at the cap.
    assert_eq!(
        get_guarded(&server, "/channels/ready/events?timeout=60").ids(),
        [ready]
    );
    assert_eq!(
        get_guarded(&server, "/events?channels=ready,full&timeout=60").ids(),
        [ready]
    );
    assert_eq!(server.get("/channels/empty/events?timeout=0").status, 204);
    assert_eq!(server.get("/channels/full/events?timeout=0").status, 204);
    assert_eq!(server.get("/healthz").status, 200);
    assert_eq!(server.get("/channels/full").json()["waiters"], 3);
    let stats = server.stats();
    assert_eq!(stats["waiters"], 3);
    assert_eq!(
        stats["polls_rejected"], 4,
        "immediate answers are not rejections"
    );

    // A publish releases the held polls; then a poll can wait again.
    let id = server.publish("full", "\"go\"");
    for poll in held {
        assert_eq!(common::join_within(poll, "held poll").ids(), [id]);
    }
    server.wait_for_stat("waiters", |n| n == 0);
    let again = server.spawn_get(&format!(
        "/channels/full/events?last_event_id={id}&timeout=60"
    ));
    server.wait_for_stat("waiters", |n| n == 1);
    assert!(!again.is_finished());
    let next = server.publish("full", "\"again\"");
    assert_eq!(
        common::join_within(again, "poll after release").ids(),
        [next]
    );
    let stats = server.stats();
    assert_eq!(stats["peak_waiters"], 3);
    assert_eq!(stats["polls_rejected"], 4);
}

// ------------------------------------------------------- channels and memory

/// Polling (and asking about) many unknown channel names leaves no channel behind once the polls end.
#[test]
fn polling_random_channel_names_does_not_grow_the_server() {
    let server = common::start_with(quick());
    for i in 0..100 {
        let resp = server.get(&format!("/channels/nobody-{i}/events?timeout=0"));
        assert_eq!(resp.status, 204);
        server
            .get(&format!("/channels/nobody-{i}"))
            .assert_error(404, "");
    }
    assert_eq!(server.stats()["channels"], 0);
    let polls: Vec<_> = (0..8)
        .map(|i| {
            if i % 2 == 0 {
                server.spawn_get(&format!("/channels/ghost-{i}/events?timeout=1"))
            } else {
                server.spawn_get(&format!("/events?channels=ghost-{i},spook-{i}&timeout=1"))
            }
        })
        .collect();
    for poll in polls {
        assert_eq!(
            common::join_within(poll, "poll on an unknown channel").status,
            204
        );
    }
    server.wait_for_stat("waiters", |n| n == 0);
    server.wait_for_stat("channels", |n| n == 0);
    let stats = server.stats();
    assert_eq!(stats["events_published"], 0);
    assert!(
        stats["peak_waiters"].as_u64().unwrap() >= 1,
        "the polls did wait: {stats}"
    );
}

/// Regression: at --max-channels a new channel evicts the channel nobody waits on that holds the oldest event (whose old cursors then get Abide-Missed), so new channels are never locked out for good; channels with waiters are kept, and when every channel has one the new channel gets a JSON 503 naming the flag.
#[test]
fn max_channels_evicts_the_oldest_idle_channel() {
    let server = common::start_with(Config {
        max_channels: 2,
        ..common::config()
    });
    let a = server.publish("one", "1");
    let b = server.publish("two", "2");
    // "one" holds the oldest event and nobody waits on it: it makes room.
    let c = server.publish("three", "3");
    server.get("/channels/one").assert_error(404, "");
    let resp = server.get(&format!(
        "/channels/one/events?timeout=0&last_event_id={}",
        a - 1
    ));
    assert_eq!(resp.status, 204, "{resp:?}");
    assert_eq!(resp.header("abide-missed"), Some("true"), "{resp:?}");
    assert_eq!(
        server.get("/events?channels=two,three&timeout=0").ids(),
        [b, c]
    );
    assert_eq!(server.stats()["channels"], 2);
    assert_eq!(server.stats()["events_dropped"], 1);

    // A channel with a waiter is never evicted: with both channels waited
    // on, a third is refused.
    let waiters: Vec<_> = [("two", b), ("three", c)]
        .iter()
        .map(|(name, id)| {
            server.spawn_get(&format!(
                "/channels/{name}/events?last_event_id={id}&timeout=60"
            ))
        })
        .collect();
    server.wait_for_stat("waiters", |n| n == 2);
    let resp = server.post("/channels/four/events", "4");
    resp.assert_error(503, "--max-channels");
    let b2 = server.publish("two", "22");
    let c2 = server.publish("three", "33");
    let answers: Vec<Vec<u64>> = waiters
        .into_iter()
        .map(|w| common::join_within(w, "a waiter").ids())
        .collect();
    assert_eq!(answers, [vec![b2], vec![c2]]);
    // Nobody waits now: the new channel evicts "two" (the oldest event).
    let d = server.publish("four", "4");
    assert_eq!(server.get("/channels/four/events?timeout=0").ids(), [d]);
    server.get("/channels/two").assert_error(404, "");
}

// -------------------------------------------------------------------- CORS

/// Without --cors-origin, no answer (including OPTIONS) carries Access-Control-* headers.
#[test]
fn without_cors_origin_there_are_no_cors_headers() {
    let server = common::start();
    server.publish("plain", "1");
    let origin = [("Origin", "https://example.com")];
    let mut answers = vec![
        send(&server, "POST", "/channels/plain/events", &origin, b"2"),
        send(
            &server,
            "GET",
            "/channels/plain/events?timeout=0",
            &origin,
            b"",
        ),
        send(
            &server,
            "GET",
            &format!("/channels/plain/events?timeout=0&last_event_id={MAX_SAFE_ID}"),
            &origin,
            b"",
        ),
        send(
            &server,
            "GET",
            "/events?channels=plain&timeout=0",
            &origin,
            b"",
        ),
        send(&server, "GET", "/channels/plain", &origin, b""),
        send(&server, "GET", "/healthz", &origin, b""),
        send(&server, "GET", "/stats", &origin, b""),
        send(&server, "GET", "/nope", &origin, b""),
        send(&server, "GET", "/channels/a%20b", &origin, b""),
    ];
    for path in [
        "/channels/plain/events",
        "/events",
        "/channels/plain",
        "/healthz",
        "/stats",
        "/metrics",
    ] {
        answers.push(send(
            &server,
            "OPTIONS",
            path,
            &[
                ("Origin", "https://example.com"),
                ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "content-type"),
            ],
            b"",
        ));
    }
    for resp in answers {
        let cors: Vec<_> = resp
            .headers
            .iter()
            .filter(|(n, _)| n.to_ascii_lowercase().starts_with("access-control-"))
            .collect();
        assert!(
            cors.is_empty(),
            "CORS headers without --cors-origin: {resp:?}"
        );
    }
}

/// With --cors-origin *, answers carry Access-Control-Allow-Origin: *, preflights on every route allow GET, POST, DELETE and Content-Type, Last-Event-ID, and Abide-Missed is exposed.
#[test]
fn cors_origin_star_marks_answers_and_answers_preflights() {
    check_cors("*");
}

/// With --cors-origin https://example.com, answers and preflights carry that origin.
#[test]
fn cors_origin_named_marks_answers_and_answers_preflights() {
    check_cors("https://example.com");
}

// ------------------------------------------------------------------ helpers

/// A config whose polls time out after 1 s by default and at most.
fn quick() -> Config {
    Config {
        default_timeout: Duration::from_secs(1),
        max_timeout: Duration::from_secs(1),
        ..common::config()
    }
}

/// GETs `path` on a thread and joins it within the hang guard: proves an
/// answer came well before a 60 s poll timeout.
fn get_guarded(server: &TestServer, path: &str) -> Resp {
    common::join_within(server.spawn_get(path), path)
}

/// Sends any method with extra headers and an optional body.
fn send(
    server: &TestServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let mut builder = ureq::http::Request::builder()
        .method(method)
        .uri(server.url(path));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let result = if body.is_empty() {
        agent.run(builder.body(()).expect("request"))
    } else {
        agent.run(builder.body(body.to_vec()).expect("request"))
    };
    common::read_resp(result.unwrap_or_else(|e| panic!("{method} {path} failed: {e}")))
}

fn check_cors(origin: &str) {
    let server = common::start_with(Config {
        cors_origin: Some(origin.to_string()),
        buffer_events: 1,
        max_event_bytes: 64,
        ..common::config()
    });
    let from = [("Origin", "https://example.com")];
    let routes = [
        "/channels/shared/events",
        "/events?channels=shared",
        "/channels/shared",
        "/healthz",
        "/stats",
        "/metrics",
    ];
    for path in routes {
        let resp = send(
            &server,
            "OPTIONS",
            path,
            &[
                ("Origin", "https://example.com"),
                ("Access-Control-Request-Method", "DELETE"),
                (
                    "Access-Control-Request-Headers",
                    "content-type, last-event-id",
                ),
            ],
            b"",
        );
        assert!(
            (200..300).contains(&resp.status),
            "preflight {path}: {resp:?}"
        );
        assert_eq!(
            resp.header("access-control-allow-origin"),
            Some(origin),
            "{path}: {resp:?}"
        );
        let methods = list(resp.header("access-control-allow-methods"));
        for method in ["GET", "POST", "DELETE"] {
            assert!(
                methods.contains(&method.to_string()),
                "{path}: methods {methods:?}"
            );
        }
        let allowed_headers = list(resp.header("access-control-allow-headers"));
        for header in ["CONTENT-TYPE", "LAST-EVENT-ID"] {
            assert!(
                allowed_headers.contains(&header.to_string()),
                "{path}: headers {allowed_headers:?}"
            );
        }
    }

    server.publish("shared", "1");
    server.publish("shared", "2");
    let answers = [
        send(&server, "POST", "/channels/shared/events", &from, b"3"),
        send(
            &server,
            "GET",
            "/channels/shared/events?timeout=0&last_event_id=0",
            &from,
            b"",
        ),
        send(
            &server,
            "GET",
            &format!("/events?channels=shared&timeout=0&last_event_id={MAX_SAFE_ID}"),
            &from,
            b"",
        ),
        send(
            &server,
            "GET",
            "/channels/empty/events?timeout=0",
            &from,
            b"",
        ),
        send(&server, "GET", "/channels/shared", &from, b""),
        send(&server, "DELETE", "/channels/gone", &from, b""),
        send(&server, "GET", "/healthz", &from, b""),
        send(&server, "GET", "/stats", &from, b""),
        send(&server, "GET", "/metrics", &from, b""),
        send(&server, "GET", "/nope", &from, b""),
        send(
            &server,
            "GET",
            "/channels/shared/events?limit=0",
            &from,
            b"",
        ),
        send(&server, "PUT", "/stats", &from, b"1"),
        send(
            &server,
            "POST",
            "/channels/shared/events",
            &from,
            &[b'1'; 100],
        ),
    ];
    for resp in &answers {
        assert_eq!(
            resp.header("access-control-allow-origin"),
            Some(origin),
            "{resp:?}"
        );
    }
    let missed = &answers[1];
    assert_eq!(missed.header("abide-missed"), Some("true"), "{missed:?}");
    let exposed = list(missed.header("access-control-expose-headers"));
    assert!(
        exposed.contains(&"ABIDE-MISSED".to_string()),
        "exposed: {exposed:?}"
    );
    assert_eq!(answers[12].status, 413, "{:?}", answers[12]);
}

/// A comma-separated header value, upper-cased, as a list.
fn list(value: Option<&str>) -> Vec<String> {
    value
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_ascii_uppercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Checks the exact shape `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn assert_rfc3339_utc_millis(timestamp: &str) {
    let bytes = timestamp.as_bytes();
    let shape = "dddd-dd-ddTdd:dd:dd.dddZ";
    let ok = bytes.len() == shape.len()
        && shape.bytes().zip(bytes).all(|(want, &got)| match want {
            b'd' => got.is_ascii_digit(),
            other => other == got,
        });
    assert!(
        ok,
        "timestamp {timestamp:?} is not RFC 3339 UTC with milliseconds"
    );
}

/// Formats `t` as RFC 3339 UTC with milliseconds (days-to-civil conversion).
fn rfc3339_millis(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).expect("after 1970");
    let secs = since.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    )
}
