//! The catalog on its own: sorting, filters, rendering against the wire types,
//! the change index, liveness.

use super::*;
use chora_api::manifest::Metadata;

fn rec(name: &str, id: &str) -> Record {
    Record {
        name: name.into(),
        id: id.into(),
        version: "1.0.0".into(),
        interfaces: [("REST".to_string(), "http://127.0.0.1:1".to_string())].into(),
        metadata: Metadata::default(),
        registered_at_ms: 1,
    }
}

fn fast() -> Liveness {
    Liveness {
        heartbeat_interval: Duration::from_millis(20),
        ttl: Duration::from_millis(60),
    }
}

#[test]
fn list_is_sorted_valid_json_and_filters() {
    let c = Catalog::new(Liveness::default(), 1);
    c.upsert(rec("b", "b-2"));
    c.upsert(rec("a", "a-1"));
    c.upsert(rec("b", "b-1"));
    let all: Vec<Instance> = serde_json::from_slice(&c.list(&ListFilter::default()).body).unwrap();
    let ids: Vec<_> = all.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["a-1", "b-1", "b-2"]);
    let f = ListFilter {
        name: Some("b".into()),
        ..Default::default()
    };
    let only_b: Vec<Instance> = serde_json::from_slice(&c.list(&f).body).unwrap();
    assert_eq!(only_b.len(), 2);
}

/// The hand-assembled JSON is exactly what serde renders for the wire types,
/// before and after a heartbeat redoes its tail, and the service head is the
/// newest up instance's.
#[test]
fn rendering_matches_the_wire_types() {
    let c = Catalog::new(Liveness::default(), 1);
    let mut old = rec("svc", "i-1");
    old.version = "1.0.0".into();
    let mut new = rec("svc", "i-2");
    new.version = "2.0.\"quoted\"".into();
    new.registered_at_ms = 5;
    new.metadata = serde_json::from_value(serde_json::json!({
        "description": "d", "tags": ["a", "b"], "environment": "e", "team": {"x": 1}
    }))
    .unwrap();
    new.interfaces.insert("gRPC".into(), "127.0.0.1:2".into());
    let a = c.upsert(old);
    let b = c.upsert(new);
    let listed = c.list(&ListFilter::default()).body;
    assert_eq!(listed, serde_json::to_vec(&[&a, &b]).unwrap());
    c.heartbeat("svc", "i-2", Some(Status::Unhealthy)).unwrap();
    let listed: Vec<Instance> =
        serde_json::from_slice(&c.list(&ListFilter::default()).body).unwrap();
    assert_eq!(listed[1].status, Status::Unhealthy);
    assert_eq!(listed[1].registered_at, b.registered_at);
    let s: chora_api::manifest::Service =
        serde_json::from_slice(&c.service("svc").unwrap().body).unwrap();
    // i-2 is newer but unhealthy: the head comes from i-1, the one up.
    assert_eq!(s.version, "1.0.0");
    assert_eq!(s.status, Status::Up);
    c.heartbeat("svc", "i-2", Some(Status::Up)).unwrap();
    let s: chora_api::manifest::Service =
        serde_json::from_slice(&c.service("svc").unwrap().body).unwrap();
    assert_eq!(s.version, b.version);
    assert_eq!(s.interfaces, b.interfaces);
    assert_eq!(s.metadata, b.metadata);
    let tagged = ListFilter {
        tag: Some("b".into()),
        ..Default::default()
    };
    let only: Vec<Instance> = serde_json::from_slice(&c.list(&tagged).body).unwrap();
    assert_eq!(only.len(), 1);
}

#[test]
fn exact_name_only() {
    let c = Catalog::new(Liveness::default(), 1);
    c.upsert(rec("test-service", "t-1"));
    assert!(c.service("test").is_err());
    let s: chora_api::manifest::Service =
        serde_json::from_slice(&c.service("test-service").unwrap().body).unwrap();
    assert_eq!(s.instances.len(), 1);
}

#[test]
fn index_moves_on_membership_and_status_not_plain_heartbeats() {
    let c = Catalog::new(Liveness::default(), 100);
    c.upsert(rec("a", "a-1"));
    let i = c.index();
    assert!(i > 100);
    c.heartbeat("a", "a-1", None).unwrap();
    assert_eq!(c.index(), i);
    c.heartbeat("a", "a-1", Some(Status::Unhealthy)).unwrap();
    assert!(c.index() > i);
    assert_eq!(c.heartbeat("a", "nope", None), Err(Unknown));
}

#[test]
fn overdue_turns_unhealthy_then_expires() {
    let c = Catalog::new(fast(), 1);
    c.upsert(rec("a", "a-1"));
    std::thread::sleep(Duration::from_millis(45));
    assert!(c.sweep().is_empty());
    assert_eq!(c.counts(), (0, 1));
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(
        c.heartbeat("a", "a-1", None),
        Err(Unknown),
        "expired stays dead"
    );
    let gone = c.sweep();
    assert_eq!(gone, vec![("a".to_string(), "a-1".to_string())]);
    assert_eq!(c.remove_expired(&gone), 1);
    assert!(c.is_empty());
}
