//! Tests of the backend set: changes reach the selector, removals wait, reloads reconcile in one rebuild, breakers and selectors are swapped.

use super::*;
use crate::backend::{state_of, BackendServer, InFlightGuard};
use pingora_load_balancing::selection::RoundRobin;

fn spec(id: &str, port: u16) -> BackendSpec {
    BackendSpec::resolve(BackendServer::new(id, format!("http://127.0.0.1:{port}"))).unwrap()
}

fn selected_ids(set: &BackendSet<RoundRobin>) -> BTreeSet<String> {
    (0..8)
        .filter_map(|_| set.select_with(b"", 8, |_, _| true))
        .filter_map(|b| state_of(&b).map(|s| s.id().to_string()))
        .collect()
}

#[test]
fn changes_reach_the_selector_and_keep_state() {
    let set: BackendSet<RoundRobin> = BackendSet::new((), None, None);
    block_on(async {
        let a = set.add(spec("a", 1)).await.unwrap();
        let _guard = InFlightGuard::new(a.clone());
        set.add(spec("b", 2)).await.unwrap();
        assert_eq!(selected_ids(&set), ["a", "b"].map(String::from).into());

        let dup_id = set.add(spec("a", 3)).await.unwrap_err();
        assert!(
            matches!(&dup_id, SetError::DuplicateId(id) if id == "a"),
            "{dup_id}"
        );
        let dup_addr = set.add(spec("c", 2)).await.unwrap_err();
        assert!(
            matches!(&dup_addr, SetError::DuplicateAddress { existing, .. } if existing == "b"),
            "{dup_addr}"
        );

        let removal = set.remove("b", Duration::ZERO).await.unwrap();
        assert!(removal.drained && removal.state.is_draining());
        assert!(matches!(
            set.remove("b", Duration::ZERO).await,
            Err(SetError::UnknownId(_))
        ));
        assert_eq!(selected_ids(&set), ["a"].map(String::from).into());
        assert_eq!(
            set.get("a").unwrap().stats.in_flight(),
            1,
            "state survives rebuilds"
        );

        let w = set.set_weight("a", Weight::new(7).unwrap()).await.unwrap();
        assert_eq!(w.weight(), 7);
        let picked = set.select_with(b"", 1, |_, _| true).unwrap();
        assert_eq!(picked.weight, 7, "the selector sees the new weight");
        assert!(Arc::ptr_eq(state_of(&picked).unwrap(), &a));

        assert!(set.drain("a").unwrap().is_draining());
        assert!(!set.undrain("a").unwrap().is_draining());
        assert!(matches!(set.drain("zz"), Err(SetError::UnknownId(_))));
    })
    .unwrap();
}

#[tokio::test(start_paused = true)]
async fn removal_waits_for_requests_in_flight() {
    let set: BackendSet<RoundRobin> = BackendSet::new((), None, None);
    let a = set.add(spec("a", 1)).await.unwrap();
    let guard = InFlightGuard::new(a.clone());
    let removal = set.remove("a", Duration::from_secs(30)).await.unwrap();
    assert!(!removal.drained, "still in flight after the wait");
    assert!(removal.waited >= Duration::from_secs(30));
    drop(guard);
    set.add(spec("b", 2)).await.unwrap();
    let b = set.get("b").unwrap();
    let guard = InFlightGuard::new(b.clone());
    let (removal, ()) = tokio::join!(set.remove("b", Duration::from_secs(30)), async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(guard);
    });
    let removal = removal.unwrap();
    assert!(removal.drained, "the request finished within the wait");
    assert!(
        removal.waited >= Duration::from_secs(5) && removal.waited < Duration::from_secs(6),
        "it waited for the request, not the whole 30 s: {:?}",
        removal.waited
    );
}

fn spec_with(id: &str, port: u16, f: impl FnOnce(&mut BackendServer)) -> BackendSpec {
    let mut server = BackendServer::new(id, format!("http://127.0.0.1:{port}"));
    f(&mut server);
    BackendSpec::resolve(server).unwrap()
}

fn ids(set: &BackendSet<RoundRobin>) -> Vec<String> {
    set.snapshot().iter().map(|b| b.id().to_string()).collect()
}

#[tokio::test]
async fn reconcile_adds_reweights_replaces_and_retires_in_one_rebuild() {
    let set: BackendSet<RoundRobin> = BackendSet::new((), None, None);
    let a = set.add(spec("a", 1)).await.unwrap();
    let b = set.add(spec("b", 2)).await.unwrap();
    let c = set.add(spec("c", 3)).await.unwrap();
    let api = set.add(spec("api", 9)).await.unwrap(); // added through the API
    set.drain("b").unwrap();
    let _in_flight = InFlightGuard::new(c.clone());

    // nothing differs: nothing happens
    let same = vec![spec("a", 1), spec("b", 2), spec("c", 3)];
    let retire = ["a", "b", "c"].map(String::from);
    assert!(set.reconcile(same, &retire).await.unwrap().is_empty());

    // a: weight 4; b: new port (replaced, still draining); c: gone; d: new
    let next = vec![
        spec_with("a", 1, |s| s.weight = 4),
        spec("b", 5),
        spec("d", 6),
    ];
    let diff = set.reconcile(next, &retire).await.unwrap();
    assert_eq!(diff.added, ["d"]);
    assert_eq!(diff.reweighted, ["a"]);
    assert!(Arc::ptr_eq(&diff.replaced[0], &b) && diff.replaced.len() == 1);
    assert!(Arc::ptr_eq(&diff.removed[0], &c) && diff.removed.len() == 1);
    assert!(c.is_draining(), "a removed backend is marked draining");
    assert_eq!(ids(&set), ["a", "b", "api", "d"], "order kept, new last");
    assert!(Arc::ptr_eq(&set.get("a").unwrap(), &a), "a kept its state");
    assert_eq!(a.weight(), 4);
    let new_b = set.get("b").unwrap();
    assert_eq!((new_b.addr.port(), new_b.is_draining()), (5, true));
    assert!(
        Arc::ptr_eq(&set.get("api").unwrap(), &api),
        "API members stay"
    );
    let selected = selected_ids(&set);
    assert!(
        selected.contains("d") && !selected.contains("c"),
        "{selected:?}"
    );
    assert_eq!(
        set.select_with(b"", 8, |b, _| b.weight == 4)
            .unwrap()
            .weight,
        4
    );

    // capacity or tags changed: replaced too
    let retire = ["a", "b", "d"].map(String::from);
    let next = vec![
        spec_with("a", 1, |s| {
            s.weight = 4;
            s.capacity = 10
        }),
        spec("b", 5),
        spec("d", 6),
    ];
    let diff = set.reconcile(next, &retire).await.unwrap();
    assert_eq!((diff.replaced.len(), diff.reweighted.len()), (1, 0));
    let new_a = set.get("a").unwrap();
    assert_eq!(new_a.server.capacity, 10);
    let picked = set
        .select_with(b"", 8, |b, _| state_of(b).is_some_and(|s| s.id() == "a"))
        .unwrap();
    assert!(
        Arc::ptr_eq(state_of(&picked).unwrap(), &new_a),
        "same address and weight: the selector has the new state, not the draining old one"
    );
}

#[tokio::test]
async fn reconcile_refuses_a_clash_and_changes_nothing() {
    let set: BackendSet<RoundRobin> = BackendSet::new((), None, None);
    set.add(spec("a", 1)).await.unwrap();
    set.add(spec("api", 2)).await.unwrap();
    let before = set.snapshot();
    let retire = ["a".to_string()];
    let next = vec![spec_with("a", 1, |s| s.weight = 3), spec("new", 2)];
    let err = set.reconcile(next, &retire).await.unwrap_err();
    assert!(
        matches!(&err, SetError::DuplicateAddress { existing, .. } if existing == "api"),
        "{err}"
    );
    assert!(Arc::ptr_eq(&before, &set.snapshot()), "members untouched");
    assert_eq!(set.get("a").unwrap().weight(), 1, "weight untouched");
}

#[tokio::test]
async fn a_new_selector_takes_over_with_the_same_members() {
    use crate::balance::{BalanceConfig, Balancer, Strategy};
    let config = |strategy| BalanceConfig { strategy, seed: 7 };
    let set: BackendSet<Balancer> = BackendSet::new(config(Strategy::RoundRobin), None, None);
    for (id, port) in [("a", 1), ("b", 2), ("c", 3)] {
        set.add(spec(id, port)).await.unwrap();
    }
    let picks = |set: &BackendSet<Balancer>| -> BTreeSet<String> {
        (0..12)
            .filter_map(|_| set.select_with(b"client-1", 8, |_, _| true))
            .filter_map(|b| state_of(&b).map(|s| s.id().to_string()))
            .collect()
    };
    assert_eq!(picks(&set).len(), 3, "round robin rotates");
    set.set_selector(config(Strategy::ConsistentHashing))
        .await
        .unwrap();
    assert_eq!(picks(&set).len(), 1, "one key, one backend on the ring");
    set.add(spec("d", 4)).await.unwrap();
    set.set_selector(config(Strategy::RoundRobin))
        .await
        .unwrap();
    assert_eq!(picks(&set).len(), 4, "later changes reach the new selector");
}

#[tokio::test]
async fn breakers_are_reconfigured_added_and_removed() {
    let on = BreakerSettings {
        failure_threshold: 1,
        recovery_threshold: 1,
        timeout: Duration::from_secs(60),
        half_open_max_calls: 1,
    };
    let set: BackendSet<RoundRobin> = BackendSet::new((), None, None);
    let a = set.add(spec("a", 1)).await.unwrap();
    assert!(a.breaker.load().is_none());
    set.set_breakers(Some(on)).await;
    let now = std::time::Instant::now();
    a.breaker
        .load_full()
        .unwrap()
        .try_acquire(now)
        .unwrap()
        .failure(now);
    assert_eq!(a.breaker_state(), "open");
    let looser = BreakerSettings {
        failure_threshold: 5,
        ..on
    };
    set.set_breakers(Some(looser)).await;
    assert_eq!(a.breaker_state(), "open", "state kept");
    assert_eq!(a.breaker.load_full().unwrap().settings(), looser);
    let b = set.add(spec("b", 2)).await.unwrap();
    assert_eq!(
        b.breaker.load_full().unwrap().settings(),
        looser,
        "new backends too"
    );
    set.set_breakers(None).await;
    assert_eq!(
        (a.breaker_state(), b.breaker_state()),
        ("disabled", "disabled")
    );
}

#[test]
fn invalid_servers_name_the_field() {
    let set: BackendSet<RoundRobin> = BackendSet::new((), None, None);
    let err = block_on(set.add_server(BackendServer::new("x", "nope")))
        .unwrap()
        .unwrap_err();
    match &err {
        SetError::Invalid { id, error } => assert_eq!((id.as_str(), error.field), ("x", "url")),
        other => panic!("{other}"),
    }
    assert!(std::error::Error::source(&err).is_some());
}
