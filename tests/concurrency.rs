//! Many publishers and subscribers at once: every subscriber sees every event
//! of its channels exactly once, in id order; one publish fans out to many
//! waiters.
mod common;

use std::collections::HashMap;
use std::thread;
use std::time::Instant;

use common::{HANG_GUARD, TestServer};

const CHANNELS: [&str; 3] = ["a", "b", "c"];
const PUBLISHERS: usize = 4;
const EVENTS_PER_PUBLISHER: usize = 200;

/// The channel publisher `p` uses for its `i`-th event (spreads every
/// publisher over every channel).
fn channel_of(p: usize, i: usize) -> &'static str {
    CHANNELS[(p + i) % CHANNELS.len()]
}

/// With 4 publishers and 7 subscribers at once, each sees its events once, in id order.
#[test]
fn concurrent_subscribers_see_every_event_once_in_order() {
    let server = common::start_with(abide::Config {
        buffer_events: 10_000,
        ..common::config()
    });
    let subscriptions: Vec<Vec<&str>> = vec![
        vec!["a"],
        vec!["b"],
        vec!["c"],
        vec!["a", "b"],
        vec!["b", "c"],
        vec!["a", "c"],
        vec!["a", "b", "c"],
    ];
    let mut expected_per_channel: HashMap<&str, usize> = HashMap::new();
    for p in 0..PUBLISHERS {
        for i in 0..EVENTS_PER_PUBLISHER {
            *expected_per_channel.entry(channel_of(p, i)).or_default() += 1;
        }
    }

    let (published, seen) = thread::scope(|scope| {
        let subscribers: Vec<_> = subscriptions
            .iter()
            .map(|channels| {
                let expected = channels.iter().map(|c| expected_per_channel[c]).sum();
                let server = &server;
                scope.spawn(move || subscribe(server, channels, expected))
            })
            .collect();
        // Every subscriber is blocked in a waiting poll before anything is published.
        server.wait_for_stat("waiters", |n| n == subscriptions.len() as u64);
        let publishers: Vec<_> = (0..PUBLISHERS)
            .map(|p| {
                let server = &server;
                scope.spawn(move || {
                    (0..EVENTS_PER_PUBLISHER)
                        .map(|i| {
                            let channel = channel_of(p, i);
                            let data = format!(r#"{{"p":{p},"i":{i}}}"#);
                            (server.publish(channel, &data), channel, data)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let published: Vec<(u64, &str, String)> = publishers
            .into_iter()
            .flat_map(|h| h.join().expect("publisher"))
            .collect();
        let seen: Vec<Vec<Seen>> = subscribers
            .into_iter()
            .map(|h| h.join().expect("subscriber"))
            .collect();
        (published, seen)
    });

    assert_eq!(published.len(), PUBLISHERS * EVENTS_PER_PUBLISHER);
    let by_id: HashMap<u64, (&str, &str)> = published
        .iter()
        .map(|(id, channel, data)| (*id, (*channel, data.as_str())))
        .collect();
    assert_eq!(by_id.len(), published.len(), "publishers got duplicate ids");

    for (channels, events) in subscriptions.iter().zip(&seen) {
        let mut expected: Vec<u64> = published
            .iter()
            .filter(|(_, channel, _)| channels.contains(channel))
            .map(|(id, _, _)| *id)
            .collect();
        expected.sort_unstable();
        let got: Vec<u64> = events.iter().map(|e| e.id).collect();
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "subscriber {channels:?}: ids not strictly increasing: {got:?}"
        );
        assert_eq!(
            got, expected,
            "subscriber {channels:?}: wrong set of events"
        );
        for event in events {
            let (channel, data) = by_id[&event.id];
            assert_eq!(event.channel, channel, "event {} channel", event.id);
            let want: serde_json::Value = serde_json::from_str(data).unwrap();
            assert_eq!(event.data, want, "event {} data", event.id);
        }
    }
    assert_eq!(
        server.stats()["events_published"],
        (PUBLISHERS * EVENTS_PER_PUBLISHER) as u64
    );
}

/// One publish answers all 200 polls waiting on its channel, and `events_delivered` counts 200.
#[test]
fn one_publish_fans_out_to_every_waiter() {
    const WAITERS: usize = 200;
    let server = common::start();
    let polls: Vec<_> = (0..WAITERS)
        .map(|_| server.spawn_get("/channels/fan/events?timeout=60"))
        .collect();
    server.wait_for_stat("waiters", |n| n == WAITERS as u64);
    assert_eq!(server.stats()["events_delivered"], 0);

    let id = server.publish("fan", r#""to everyone""#);
    for poll in polls {
        let resp = common::join_within(poll, "fan-out poll");
        assert_eq!(resp.ids(), [id], "{resp:?}");
        assert_eq!(resp.json()[0]["data"], "to everyone");
        assert_eq!(resp.header("abide-missed"), None, "{resp:?}");
    }
    // The counter is bumped after each answer is written, so wait for it.
    server.wait_for_stat("events_delivered", |n| n >= WAITERS as u64);
    server.wait_for_stat("waiters", |n| n == 0);
    assert_eq!(server.stats()["events_delivered"], WAITERS as u64);
}

/// One event as a subscriber received it.
struct Seen {
    id: u64,
    channel: String,
    data: serde_json::Value,
}

/// Long-polls `channels` from cursor 0, re-polling at once with the last id
/// seen, until `expected` events have arrived (or the hang guard passes).
fn subscribe(server: &TestServer, channels: &[&str], expected: usize) -> Vec<Seen> {
    let path = match channels {
        [one] => format!("/channels/{one}/events"),
        many => format!("/events?channels={}", many.join(",")),
    };
    let separator = if path.contains('?') { '&' } else { '?' };
    let deadline = Instant::now() + HANG_GUARD;
    let mut seen: Vec<Seen> = Vec::with_capacity(expected);
    let mut cursor = 0;
    while seen.len() < expected {
        assert!(
            Instant::now() < deadline,
            "subscriber {channels:?}: only {} of {expected} events before the hang guard",
            seen.len()
        );
        let resp = server.get(&format!(
            "{path}{separator}last_event_id={cursor}&timeout=5"
        ));
        assert_eq!(
            resp.header("abide-missed"),
            None,
            "subscriber {channels:?}: {resp:?}"
        );
        match resp.status {
            204 => continue,
            200 => {}
            _ => panic!("subscriber {channels:?}: unexpected answer {resp:?}"),
        }
        let events = resp.json();
        let events = events.as_array().expect("array");
        assert!(
            !events.is_empty(),
            "subscriber {channels:?}: empty 200 answer"
        );
        for event in events {
            let id = event["id"].as_u64().expect("integer id");
            let channel = event["channel"].as_str().expect("channel").to_string();
            assert!(
                channels.contains(&channel.as_str()),
                "subscriber {channels:?} got an event of {channel}"
            );
            assert!(
                id > cursor,
                "subscriber {channels:?}: id {id} not after cursor {cursor}"
            );
            cursor = id;
            seen.push(Seen {
                id,
                channel,
                data: event["data"].clone(),
            });
        }
    }
    seen
}
