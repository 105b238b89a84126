//! The email worker's sender policy (`email.allowed_from`): a task may only
//! send as the addresses and domains listed; any other `from` or
//! `reply_to` is parked at once as `from_not_allowed`, and nothing is sent.

use serde_json::json;
use warren::PublishOptions;
use warren::contract::headers;
use warren_tests::{EmailWorld, WAIT, rcpt};

#[tokio::test]
async fn a_sender_outside_allowed_from_is_parked_and_nothing_is_sent() {
    let s = EmailWorld::start(&[(
        "WARREN_EMAIL__ALLOWED_FROM",
        r#"["@warren.test", "Billing@Example.org"]"#,
    )])
    .await
    .unwrap();
    let send = |to: &str, extra: serde_json::Value| {
        let mut body = json!({"to": to, "subject": "s", "text": "t"});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        body
    };
    let spoofed_from = rcpt("spoofed-from");
    let spoofed_reply = rcpt("spoofed-reply");
    let mut parked_ids = Vec::new();
    for (to, extra) in [
        (&spoofed_from, json!({"from": "CEO <ceo@evil.test>"})),
        (&spoofed_reply, json!({"reply_to": "help@evil.test"})),
    ] {
        parked_ids.push(
            s.broker
                .publish("email.send", &send(to, extra), PublishOptions::default())
                .await
                .unwrap(),
        );
    }
    let parked = s
        .broker
        .take(&s.broker.email_dead_queue(), 2, WAIT)
        .await
        .unwrap();
    for m in &parked {
        assert_eq!(
            m.header(headers::ERROR_KIND).as_deref(),
            Some("from_not_allowed")
        );
        assert_eq!(m.header(headers::DEAD_REASON).as_deref(), Some("permanent"));
        assert_eq!(m.header(headers::ATTEMPT).as_deref(), Some("1"));
    }
    let errors: Vec<String> = parked
        .iter()
        .filter_map(|m| m.header(headers::ERROR))
        .collect();
    assert!(
        errors.iter().any(|e| e.contains("from ceo@evil.test")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("reply_to help@evil.test")),
        "{errors:?}"
    );

    // The listed address (any case) and domain pass; the default sender's
    // domain is listed too.
    let fine = rcpt("allowed");
    for extra in [
        json!({"from": "billing@example.org"}),
        json!({"from": "Ops <ops@warren.test>", "reply_to": "help@WARREN.test"}),
        json!({}),
    ] {
        s.broker
            .publish("email.send", &send(&fine, extra), PublishOptions::default())
            .await
            .unwrap();
    }
    s.sink.wait_for_messages_to(&fine, 3, WAIT).await.unwrap();
    // Parked before any send: the sink never saw them.
    assert!(s.sink.messages_to(&spoofed_from).is_empty());
    assert!(s.sink.messages_to(&spoofed_reply).is_empty());
    assert!(s.sink.rejections_to(&spoofed_from).is_empty());
    s.broker.cleanup().await.unwrap();
}

/// With SMTP and no `allowed_from`, only the domain of `default_from`
/// (`warren.test` in the tests) may send.
#[tokio::test]
async fn over_smtp_the_default_policy_is_the_default_senders_domain() {
    let s = EmailWorld::start(&[]).await.unwrap();
    let other = rcpt("other-domain");
    s.broker
        .publish(
            "email.send",
            &json!({"to": other, "from": "news@elsewhere.test", "subject": "s", "text": "t"}),
            PublishOptions::default(),
        )
        .await
        .unwrap();
    let parked = s
        .broker
        .take(&s.broker.email_dead_queue(), 1, WAIT)
        .await
        .unwrap();
    assert_eq!(
        parked[0].header(headers::ERROR_KIND).as_deref(),
        Some("from_not_allowed")
    );
    let own = rcpt("own-domain");
    s.broker
        .publish(
            "email.send",
            &json!({"to": own, "from": "news@warren.test", "subject": "s", "text": "t"}),
            PublishOptions::default(),
        )
        .await
        .unwrap();
    s.sink.wait_for_messages_to(&own, 1, WAIT).await.unwrap();
    assert!(s.sink.messages_to(&other).is_empty());
    s.broker.cleanup().await.unwrap();
}
