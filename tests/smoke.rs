//! A first pass over the API as the README shows it.
mod common;

/// A published event reaches a waiting poll, and the poll's answer has the documented shape.
#[test]
fn publish_wakes_a_waiting_poll() {
    let server = common::start();
    let poll = server.spawn_get("/channels/room/events?timeout=20");
    server.wait_for_stat("waiters", |n| n == 1);
    let id = server.publish("room", r#"{"text":"hello"}"#);
    let resp = common::join_within(poll, "poll answer");
    assert_eq!(resp.ids(), [id]);
    let event = &resp.json()[0];
    assert_eq!(event["channel"], "room");
    assert_eq!(event["data"]["text"], "hello");
    assert_eq!(resp.header("cache-control"), Some("no-store"));
}
