//! The agent's Kubernetes watchers against a SIMULATED API server (no real kube-apiserver can
//! run here; see tests/k8s_support/sim_api.rs): driver and executor pods come and go, watches
//! drop and expire, the API is unreachable, and real files on disk are deleted or kept.

use crate::k8s_support::{
    driver_pod, executor_pod, kubeconfig, unreachable_kubeconfig, wait_until, Disk, Node, SimApi, NODE,
};

const NS: &str = "spark-jobs";

fn all_gone(paths: &[std::path::PathBuf]) -> bool {
    paths.iter().all(|p| !p.exists())
}

fn all_there(paths: &[std::path::PathBuf]) -> bool {
    paths.iter().all(|p| p.exists())
}

#[tokio::test]
async fn simulated_api_driver_completion_deletes_the_app_dirs() {
    let sim = SimApi::start().await;
    let disk = Disk::new();
    sim.apply(driver_pod(NS, "a-driver", "spark-a", "Running"));
    sim.apply(driver_pod(NS, "b-driver", "spark-b", "Running"));
    let node = Node::watching(&disk, &sim.url()).await;
    let a1 = node.register(&disk, "spark-a", "1").await;
    let a2 = node.register(&disk, "spark-a", "2").await;
    let b1 = node.register(&disk, "spark-b", "1").await;
    node.wait_synced().await;

    sim.set_phase(NS, "a-driver", "Succeeded");
    wait_until("spark-a's dirs are deleted", || !a1.dir.exists() && !a2.dir.exists()).await;
    assert!(!node.knows("spark-a"), "the registrations went with the files");
    assert!(node.knows("spark-b") && all_there(&b1.shuffle) && all_there(&b1.unserved), "another app is untouched");

    sim.set_phase(NS, "b-driver", "Failed");
    wait_until("a failed driver ends its app too", || !b1.dir.exists()).await;
    assert_eq!(node.health().apps_removed, 2);
    assert!(disk.root.exists(), "the root itself is never deleted");
    node.stop().await;
}

#[tokio::test]
async fn simulated_api_driver_pod_deletion_deletes_the_app_dirs_and_phase_unknown_does_not() {
    let sim = SimApi::start().await;
    let disk = Disk::new();
    sim.apply(driver_pod(NS, "a-driver", "spark-a", "Running"));
    sim.apply(driver_pod("other-ns", "b-driver", "spark-b", "Running"));
    let node = Node::watching(&disk, &sim.url()).await;
    let a = node.register(&disk, "spark-a", "1").await;
    let b = node.register(&disk, "spark-b", "1").await;
    node.wait_synced().await;

    // The node running b's driver stops reporting: Unknown is not an ending.
    sim.set_phase("other-ns", "b-driver", "Unknown");
    assert!(sim.delete(NS, "a-driver"));
    wait_until("spark-a's dirs are deleted", || !a.dir.exists()).await;
    // Both events were on one watch stream and applied in order; b's came first.
    assert!(node.knows("spark-b") && all_there(&b.shuffle) && all_there(&b.unserved));
    node.stop().await;
}

#[tokio::test]
async fn simulated_api_driver_deleted_while_the_agent_was_down_is_cleaned_after_restart() {
    let sim = SimApi::start().await;
    let disk = Disk::new();
    let config = kubeconfig(&disk.scratch, &sim.url());
    sim.apply(driver_pod(NS, "gone-driver", "spark-gone", "Running"));
    sim.apply(driver_pod(NS, "done-driver", "spark-done", "Running"));
    sim.apply(driver_pod(NS, "live-driver", "spark-live", "Running"));
    let node = Node::start(&disk, Some(&config)).await;
    let gone = node.register(&disk, "spark-gone", "1").await;
    let done = node.register(&disk, "spark-done", "1").await;
    let live = node.register(&disk, "spark-live", "1").await;
    node.wait_synced().await;
    node.stop().await;

    // While no agent runs: one driver pod is deleted (its executors with it), one completes.
    sim.delete(NS, "gone-driver");
    sim.set_phase(NS, "done-driver", "Succeeded");

    let node = Node::start(&disk, Some(&config)).await;
    // Checked before this (current-thread) test yields, so before the watchers have run.
    assert!(node.knows("spark-gone") && node.knows("spark-done"), "the journal brought the apps back");
    wait_until("the deleted driver's app is cleaned", || !gone.dir.exists()).await;
    wait_until("the completed driver's app is cleaned", || !done.dir.exists()).await;
    assert!(node.knows("spark-live") && all_there(&live.shuffle) && all_there(&live.unserved));
    assert!(
        sim.count_requests(&["spark-app-selector=spark-gone", "spark-role=executor"]) >= 1,
        "an app with no driver pod is removed only after its executors were checked too"
    );
    node.stop().await;

    let node = Node::start(&disk, None).await;
    assert!(!node.knows("spark-gone") && !node.knows("spark-done"), "the removals were persisted");
    node.stop().await;
}

#[tokio::test]
async fn simulated_api_dropped_watch_is_resumed_without_a_relist() {
    let sim = SimApi::start().await;
    let disk = Disk::new();
    sim.apply(driver_pod(NS, "a-driver", "spark-a", "Running"));
    let node = Node::watching(&disk, &sim.url()).await;
    let a = node.register(&disk, "spark-a", "1").await;
    node.wait_synced().await;
    let before = node.health();
    sim.bookmark();

    sim.drop_watches();
    sim.set_phase(NS, "a-driver", "Succeeded");
    wait_until("the change made after the drop arrives", || !a.dir.exists()).await;
    let after = node.health();
    assert!(after.drivers.watch_starts > before.drivers.watch_starts, "the watch was started again");
    assert_eq!(after.drivers.lists, 1, "resumed from its resourceVersion, not re-listed");
    wait_until("both watches are up again", || {
        let h = node.health();
        h.drivers.up && h.executors.up
    })
    .await;
    let resumed = sim.requests().iter().filter(|r| r.contains("watch=true") && r.contains("spark-role=driver")).count();
    assert!(resumed >= 2, "a second watch request: {:?}", sim.requests());
    node.stop().await;
}

#[tokio::test]
async fn simulated_api_watch_ended_by_the_server_is_resumed_quietly() {
    let sim = SimApi::start().await;
    let disk = Disk::new();
    sim.apply(driver_pod(NS, "a-driver", "spark-a", "Running"));
    let node = Node::watching(&disk, &sim.url()).await;
    let a = node.register(&disk, "spark-a", "1").await;
    node.wait_synced().await;
    let before = node.health();

    // What the API server does to every watch at its timeout: end the response properly.
    sim.end_watches();
    wait_until("both watches were started again", || {
        let h = node.health();
        h.drivers.watch_starts > before.drivers.watch_starts && h.executors.watch_starts > before.executors.watch_starts
    })
    .await;
    sim.delete(NS, "a-driver");
    wait_until("the deletion after the restart arrives", || !a.dir.exists()).await;
    let after = node.health();
    assert_eq!((after.drivers.errors, after.executors.errors), (0, 0), "a normal end is not an error");
    assert_eq!((after.drivers.lists, after.executors.lists), (1, 1), "and needs no re-list");
    node.stop().await;
}

#[tokio::test]
async fn simulated_api_outage_deletes_nothing_and_recovery_catches_up() {
    let sim = SimApi::start().await;
    let disk = Disk::new();
    sim.apply(driver_pod(NS, "a-driver", "spark-a", "Running"));
    sim.apply(driver_pod(NS, "b-driver", "spark-b", "Running"));
    sim.fail_requests_containing("/api/v1/pods");
    let node = Node::watching(&disk, &sim.url()).await;
    let a = node.register(&disk, "spark-a", "1").await;
    let b = node.register(&disk, "spark-b", "1").await;
    wait_until("the API's 500s were seen by both watches", || {
        let h = node.health();
        h.drivers.errors >= 2 && h.executors.errors >= 2
    })
    .await;
    // Ends that happen during the outage.
    sim.set_phase(NS, "a-driver", "Succeeded");
    sim.delete(NS, "b-driver");
    let h = node.health();
    assert!(!h.drivers.up && h.reconciles == 0, "{h:?}");
    assert!(all_there(&a.unserved) && all_there(&b.unserved), "nothing is deleted while the API fails");

    sim.stop_failing();
    wait_until("the finished app is cleaned after the outage", || !a.dir.exists()).await;
    wait_until("the deleted driver's app is cleaned after the outage", || !b.dir.exists()).await;
    node.wait_synced().await;
    let h = node.health();
    assert!(h.drivers.last_sync_unix_secs > 0 && h.api_errors >= 4, "{h:?}");
    node.stop().await;
}

#[tokio::test]
async fn simulated_api_expired_watch_relists_and_catches_the_deletion_it_missed() {
    let sim = SimApi::start().await;
    let disk = Disk::new();
    sim.apply(driver_pod(NS, "a-driver", "spark-a", "Running"));
    sim.apply(driver_pod(NS, "b-driver", "spark-b", "Running"));
    sim.apply(executor_pod(NS, "a-exec-1", "spark-a", "1", NODE, "Running"));
    let node = Node::watching(&disk, &sim.url()).await;
    let a = node.register(&disk, "spark-a", "1").await;
    let b = node.register(&disk, "spark-b", "1").await;
    node.wait_synced().await;

    // Deleted with no event any watch will see, then every watch expires: only a re-list
    // can tell the agent.
    sim.delete_silently(NS, "a-driver");
    sim.delete_silently(NS, "a-exec-1");
    sim.expire_watches();
    wait_until("spark-a's dirs are deleted after the re-list", || !a.dir.exists()).await;
    let h = node.health();
    assert!(h.drivers.lists >= 2, "the driver watch re-listed: {h:?}");
    assert!(h.drivers.errors >= 1, "the 410 was counted: {h:?}");
    wait_until("the executor watch re-listed too", || node.health().executors.lists >= 2).await;
    assert!(node.knows("spark-b") && all_there(&b.unserved));

    // And it goes on watching after the re-list.
    sim.delete(NS, "b-driver");
    wait_until("spark-b's dirs are deleted", || !b.dir.exists()).await;
    node.stop().await;
}

#[tokio::test]
async fn unreachable_api_server_deletes_nothing_and_health_shows_it() {
    let disk = Disk::new();
    let node = Node::start(&disk, Some(&unreachable_kubeconfig(&disk.scratch))).await;
    let a = node.register(&disk, "spark-a", "1").await;
    node.register_driver("spark-fork").await;
    wait_until("both watches have failed at least twice", || {
        let h = node.health();
        h.drivers.errors >= 2 && h.executors.errors >= 2
    })
    .await;
    let h = node.health();
    assert!(h.enabled);
    assert!(!h.drivers.up && !h.executors.up, "{h:?}");
    assert_eq!(h.drivers.lists, 0);
    assert_eq!(h.drivers.last_sync_unix_secs, 0);
    assert!(h.api_errors >= 4, "{h:?}");
    assert_eq!(h.reconciles, 0, "no application was judged without a view of the driver pods");
    assert!(node.knows("spark-a") && node.knows("spark-fork"));
    assert!(all_there(&a.shuffle) && all_there(&a.unserved));
    node.stop().await;
}

#[tokio::test]
async fn simulated_api_executor_pod_deletion_removes_non_shuffle_files_and_keeps_shuffle_files() {
    let sim = SimApi::start().await;
    let disk = Disk::new();
    sim.apply(driver_pod(NS, "a-driver", "spark-a", "Running"));
    sim.apply(executor_pod(NS, "a-exec-1", "spark-a", "1", NODE, "Running"));
    sim.apply(executor_pod(NS, "a-exec-2", "spark-a", "2", NODE, "Running"));
    sim.apply(executor_pod(NS, "a-exec-3", "spark-a", "3", NODE, "Running"));
    let node = Node::watching(&disk, &sim.url()).await;
    let e1 = node.register(&disk, "spark-a", "1").await;
    let e2 = node.register(&disk, "spark-a", "2").await;
    let e3 = node.register(&disk, "spark-a", "3").await;
    node.wait_synced().await;

    sim.delete(NS, "a-exec-1");
    wait_until("executor 1's unserved files are deleted", || all_gone(&e1.unserved)).await;
    assert!(all_there(&e1.shuffle), "its shuffle files are still served");
    assert!(node.registry.executor("spark-a", "1").is_some(), "and so is its registration");

    sim.set_phase(NS, "a-exec-2", "Failed");
    wait_until("a failed executor's unserved files are deleted", || all_gone(&e2.unserved)).await;
    assert!(all_there(&e2.shuffle));
    assert!(all_there(&e3.shuffle) && all_there(&e3.unserved), "a running executor is untouched");
    assert_eq!(node.health().executors_removed, 2);
    assert!(node.knows("spark-a"), "executors ending do not end the app");
    assert!(
        sim.count_requests(&["spark-role=executor", &format!("spec.nodeName={NODE}"), "watch=true"]) >= 1,
        "the executor watch is limited to this node: {:?}",
        sim.requests()
    );
    node.stop().await;
}

#[tokio::test]
async fn simulated_api_executor_pods_of_other_nodes_are_not_this_agents_business() {
    let sim = SimApi::start().await;
    let disk = Disk::new();
    sim.apply(driver_pod(NS, "a-driver", "spark-a", "Running"));
    // Same app and executor id as one registered here, but on another node.
    sim.apply(executor_pod(NS, "elsewhere", "spark-a", "1", "node-b", "Running"));
    sim.apply(executor_pod(NS, "here", "spark-a", "2", NODE, "Running"));
    let node = Node::watching(&disk, &sim.url()).await;
    let e1 = node.register(&disk, "spark-a", "1").await;
    let e2 = node.register(&disk, "spark-a", "2").await;
    node.wait_synced().await;

    sim.delete(NS, "elsewhere");
    sim.delete(NS, "here");
    wait_until("the local executor's files are cleaned", || all_gone(&e2.unserved)).await;
    assert!(all_there(&e1.unserved), "the other node's pod was never seen, so never acted on");
    assert_eq!(node.health().executors_removed, 1);
    node.stop().await;
}

#[tokio::test]
async fn simulated_api_failing_confirmation_keeps_an_app_without_a_driver_pod_until_the_api_answers() {
    let sim = SimApi::start().await;
    let disk = Disk::new();
    let node = Node::watching(&disk, &sim.url()).await;
    // The per-app LISTs fail; the watches themselves work.
    sim.fail_requests_containing("spark-app-selector=spark-a");
    let a = node.register(&disk, "spark-a", "1").await;
    node.wait_synced().await;
    wait_until("a confirmation failed and was counted", || node.health().removals_deferred >= 2).await;
    assert!(node.knows("spark-a") && all_there(&a.shuffle) && all_there(&a.unserved), "unknown means keep");

    sim.stop_failing();
    wait_until("the app is removed once the API answers", || !a.dir.exists()).await;
    node.stop().await;
}

#[tokio::test]
async fn simulated_api_client_mode_app_with_running_executors_and_no_driver_pod_is_kept() {
    let sim = SimApi::start().await;
    let disk = Disk::new();
    // Client mode: the driver is no labelled pod, only executors carry the app id.
    sim.apply(executor_pod(NS, "nb-exec-1", "spark-notebook", "1", NODE, "Running"));
    sim.apply(executor_pod(NS, "nb-exec-2", "spark-notebook", "2", "node-b", "Running"));
    let node = Node::watching(&disk, &sim.url()).await;
    let e1 = node.register(&disk, "spark-notebook", "1").await;
    node.wait_synced().await;
    wait_until("the app was checked", || {
        sim.count_requests(&["spark-app-selector=spark-notebook", "spark-role=executor"]) >= 1
    })
    .await;
    let reconciles = node.health().reconciles;
    wait_until("another pass ran", || node.health().reconciles > reconciles + 2).await;
    assert!(node.knows("spark-notebook") && all_there(&e1.shuffle) && all_there(&e1.unserved));
    assert_eq!(
        sim.count_requests(&["spark-app-selector=spark-notebook", "spark-role=executor"]),
        1,
        "asked once, then left alone until absent_recheck"
    );
    node.stop().await;
}

#[tokio::test]
async fn simulated_api_fork_app_registered_with_register_driver_ends_with_its_driver_pod() {
    let sim = SimApi::start().await;
    let disk = Disk::new();
    sim.apply(driver_pod("default", "fork-driver", "spark-fork-1", "Running"));
    let node = Node::watching(&disk, &sim.url()).await;
    node.register_driver("spark-fork-1").await;
    let e = node.register(&disk, "spark-fork-1", "1").await;
    node.wait_synced().await;

    sim.delete("default", "fork-driver");
    wait_until("the fork app's dirs are deleted", || !e.dir.exists()).await;
    assert!(!node.knows("spark-fork-1") && node.registry.driver("spark-fork-1").is_none());
    node.stop().await;
}

#[tokio::test]
async fn simulated_api_watches_ask_for_what_the_rbac_grants() {
    let sim = SimApi::start().await;
    let disk = Disk::new();
    sim.apply(driver_pod(NS, "a-driver", "spark-a", "Running"));
    let node = Node::watching(&disk, &sim.url()).await;
    node.register(&disk, "spark-a", "1").await;
    node.register(&disk, "spark-x", "1").await; // no driver pod: confirmed with per-app LISTs
    node.wait_synced().await;
    wait_until("spark-x was judged", || !node.knows("spark-x")).await;
    for request in sim.requests() {
        // Only cluster-wide pod list and watch: deploy/base/rbac.yaml grants list and watch
        // on pods, nothing else.
        assert!(request.starts_with("/api/v1/pods?"), "unexpected request {request}");
        assert!(request.contains("labelSelector=spark-role="), "every request selects Spark pods: {request}");
    }
    node.stop().await;
}

#[tokio::test]
async fn simulated_api_reconcile_interval_from_the_config_key_paces_repeated_passes() {
    let sim = SimApi::start().await;
    let disk = Disk::new();
    // As an operator sets it. The default (30 s) would give at most one more pass within the wait.
    let conf = disk.scratch.join("agent.conf");
    std::fs::write(&conf, format!("agent.k8s.reconcile.interval 100ms\nagent.k8s.node.name {NODE}\n"))
        .expect("write the config file");
    let mut config = spark_shuffle_agent::config::Config::default();
    config.load_file(&conf).expect("a valid config file");
    config.validate().expect("valid");
    sim.apply(driver_pod(NS, "a-driver", "spark-a", "Running"));
    let settings = config.k8s_settings();
    let node = Node::start_with(&disk, Some(&kubeconfig(&disk.scratch, &sim.url())), settings).await;
    let e = node.register(&disk, "spark-a", "1").await;
    node.wait_synced().await;
    let first = node.health().reconciles;
    wait_until("three more passes ran", || node.health().reconciles >= first + 3).await;
    assert!(node.knows("spark-a") && all_there(&e.shuffle), "a running app is kept through every pass");
    node.stop().await;
}
