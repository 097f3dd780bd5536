use super::*;
use crate::auth::Lookup;
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use secret_files::ReadError;
use watcher::Event;

fn driver(name: &str, uid: &str, app: &str, phase: &str) -> Pod {
    let mut pod = pods::test_pod(name, Some(phase), &[(pods::ROLE_LABEL, "driver"), (pods::APP_LABEL, app)]);
    pod.metadata.uid = Some(uid.into());
    pod
}

/// An executor pod as Spark builds it (BasicExecutorFeatureStep): owned by the driver pod, the
/// app id in a label and in env, the secret and the `-D` options in env.
fn executor(name: &str, app: &str, owner: &str, secret: Option<&str>, opts: &[&str]) -> Pod {
    let mut pod = pods::test_pod(name, Some("Running"), &[(pods::ROLE_LABEL, "executor"), (pods::APP_LABEL, app)]);
    pod.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: "driver".into(),
        uid: owner.into(),
        controller: Some(true),
        ..OwnerReference::default()
    }]);
    let var = |name: &str, value: &str| EnvVar { name: name.into(), value: Some(value.into()), ..EnvVar::default() };
    let mut env = vec![var(APP_ID_ENV, app)];
    if let Some(secret) = secret {
        env.push(var(SECRET_ENV, secret));
    }
    for (i, opt) in opts.iter().enumerate() {
        env.push(var(&format!("{JAVA_OPT_ENV}{i}"), opt));
    }
    pod.spec = Some(PodSpec {
        containers: vec![Container {
            name: "spark-kubernetes-executor".into(),
            env: Some(env),
            ..Container::default()
        }],
        ..PodSpec::default()
    });
    pod
}

const AUTH_ON: &[&str] =
    &["-Dspark.driver.port=7078", "-Dspark.authenticate=true", "-Dspark.network.crypto.enabled=true"];

fn secret_of(keyring: &Keyring, app: &str) -> Option<Vec<u8>> {
    match keyring.lookup(app) {
        Lookup::Known(AppAccess::Authenticated(p)) => p.secret_for(app).map(|s| s.psk().to_vec()),
        _ => None,
    }
}

#[test]
fn an_executor_pod_claims_its_apps_secret_and_settings() {
    let claim = executor_claim(&executor("e1", "spark-1", "d-uid", Some("s3cret"), AUTH_ON)).expect("a claim");
    assert_eq!(
        (claim.app_id.as_str(), claim.namespace.as_str(), claim.owner_uid.as_str()),
        ("spark-1", "jobs", "d-uid")
    );
    let AppAccess::Authenticated(policy) = claim.access else { panic!("authenticated: {:?}", claim.access) };
    assert!(policy.crypto_enabled);
    assert_eq!(policy.secret_for("spark-1").unwrap().psk(), b"s3cret");
    let open = executor_claim(&executor("e1", "spark-1", "d-uid", None, &["-Dspark.driver.port=7078"])).unwrap();
    assert!(matches!(open.access, AppAccess::Unauthenticated));
}

#[test]
fn pods_spark_did_not_build_make_no_claim() {
    let mut mismatched = executor("e1", "spark-1", "d", Some("s"), AUTH_ON);
    mismatched.spec.as_mut().unwrap().containers[0].env.as_mut().unwrap()[0].value = Some("spark-2".into());
    assert!(executor_claim(&mismatched).is_err(), "SPARK_APPLICATION_ID must equal the label");
    let mut unowned = executor("e1", "spark-1", "d", Some("s"), AUTH_ON);
    unowned.metadata.owner_references = None;
    assert!(executor_claim(&unowned).is_err());
    let mut by_a_job = executor("e1", "spark-1", "d", Some("s"), AUTH_ON);
    by_a_job.metadata.owner_references.as_mut().unwrap()[0].kind = "Job".into();
    assert!(executor_claim(&by_a_job).is_err());
}

#[test]
fn an_app_with_authentication_on_and_no_secret_in_its_pods_is_unsupported_not_open() {
    let claim = executor_claim(&executor("e1", "spark-1", "d", None, AUTH_ON)).unwrap();
    assert!(matches!(claim.access, AppAccess::Unsupported(_)), "{:?}", claim.access);
    let file = ["-Dspark.authenticate=true", "-Dspark.authenticate.secret.executor.file=/mnt/secret/key"];
    let claim = executor_claim(&executor("e1", "spark-1", "d", None, &file)).unwrap();
    assert!(matches!(claim.access, AppAccess::Unsupported(_)), "{:?}", claim.access);
}

#[test]
fn a_claim_counts_once_its_owner_is_a_live_driver_of_the_same_app_whichever_event_comes_first() {
    for driver_first in [true, false] {
        let keyring = Keyring::new();
        let mut source = SecretSource::default();
        let d = Event::Apply(driver("drv", "d-uid", "spark-1", "Running"));
        let e = Event::Apply(executor("e1", "spark-1", "d-uid", Some("s1"), AUTH_ON));
        if driver_first {
            source.driver_event(&d, &keyring);
            source.executor_event(&e, &keyring);
        } else {
            source.executor_event(&e, &keyring);
            assert!(matches!(keyring.lookup("spark-1"), Lookup::Unknown), "not before its driver is seen");
            source.driver_event(&d, &keyring);
        }
        assert_eq!(secret_of(&keyring, "spark-1").as_deref(), Some(&b"s1"[..]), "driver first: {driver_first}");
    }
}

#[test]
fn a_pod_owned_by_another_apps_driver_or_a_non_driver_is_not_believed() {
    let keyring = Keyring::new();
    let mut source = SecretSource::default();
    source.driver_event(&Event::Apply(driver("drv", "d-uid", "spark-other", "Running")), &keyring);
    source.executor_event(&Event::Apply(executor("e1", "spark-1", "d-uid", Some("evil"), AUTH_ON)), &keyring);
    source.executor_event(&Event::Apply(executor("e2", "spark-1", "not-a-driver", Some("evil"), AUTH_ON)), &keyring);
    assert!(matches!(keyring.lookup("spark-1"), Lookup::Unknown));
}

#[test]
fn a_second_secret_for_a_live_app_refuses_it_and_its_drivers_end_drops_everything() {
    let keyring = Keyring::new();
    let mut source = SecretSource::default();
    source.driver_event(&Event::Apply(driver("drv", "d-uid", "spark-1", "Running")), &keyring);
    source.executor_event(&Event::Apply(executor("e1", "spark-1", "d-uid", Some("s1"), AUTH_ON)), &keyring);
    source.executor_event(&Event::Apply(executor("e2", "spark-1", "d-uid", Some("s2"), AUTH_ON)), &keyring);
    assert!(matches!(keyring.lookup("spark-1"), Lookup::Conflicted));
    assert_eq!(keyring.conflicts(), 1);
    source.driver_event(&Event::Apply(driver("drv", "d-uid", "spark-1", "Succeeded")), &keyring);
    assert!(matches!(keyring.lookup("spark-1"), Lookup::Unknown));
}

#[test]
fn a_secret_outlives_its_executor_pods_and_ends_with_its_driver() {
    let keyring = Keyring::new();
    let mut source = SecretSource::default();
    source.driver_event(&Event::Apply(driver("drv", "d-uid", "spark-1", "Running")), &keyring);
    let e1 = executor("e1", "spark-1", "d-uid", Some("s1"), AUTH_ON);
    source.executor_event(&Event::Apply(e1.clone()), &keyring);
    source.executor_event(&Event::Delete(e1), &keyring);
    assert!(secret_of(&keyring, "spark-1").is_some(), "the files are still served after the executor went");
    source.driver_event(&Event::Delete(driver("drv", "d-uid", "spark-1", "Running")), &keyring);
    assert!(secret_of(&keyring, "spark-1").is_none());
}

#[test]
fn a_driver_missing_from_a_relist_ends_its_apps_secret() {
    let keyring = Keyring::new();
    let mut source = SecretSource::default();
    source.driver_event(&Event::Apply(driver("drv", "d-uid", "spark-1", "Running")), &keyring);
    source.executor_event(&Event::Apply(executor("e1", "spark-1", "d-uid", Some("s1"), AUTH_ON)), &keyring);
    source.driver_event(&Event::Init, &keyring);
    source.driver_event(&Event::InitApply(driver("drv2", "d2-uid", "spark-2", "Running")), &keyring);
    source.driver_event(&Event::InitDone, &keyring);
    assert!(secret_of(&keyring, "spark-1").is_none());
}

/// An executor pod whose app reads the secret from `/mnt/secret/key`, mounted from Secret
/// `spark-auth` as `spark.kubernetes.executor.secrets.spark-auth=/mnt/secret` makes it.
fn file_executor(name: &str, app: &str, owner: &str) -> Pod {
    use k8s_openapi::api::core::v1::{SecretVolumeSource, Volume, VolumeMount};
    let opts = ["-Dspark.authenticate=true", "-Dspark.authenticate.secret.executor.file=/mnt/secret/key"];
    let mut pod = executor(name, app, owner, None, &opts);
    let spec = pod.spec.as_mut().unwrap();
    spec.containers[0].volume_mounts = Some(vec![VolumeMount {
        name: "spark-auth-volume".into(),
        mount_path: "/mnt/secret".into(),
        ..Default::default()
    }]);
    spec.volumes = Some(vec![Volume {
        name: "spark-auth-volume".into(),
        secret: Some(SecretVolumeSource { secret_name: Some("spark-auth".into()), ..Default::default() }),
        ..Default::default()
    }]);
    pod
}

#[test]
fn the_executor_file_falls_back_to_the_secret_file_and_names_its_mount() {
    let claim = executor_claim(&file_executor("e1", "spark-1", "d")).unwrap();
    let file = claim.secret_file.expect("a file claim");
    assert_eq!(file.source, Ok(SecretKeyRef { name: "spark-auth".into(), key: "key".into() }));
    let mut pod = file_executor("e1", "spark-1", "d");
    let env = pod.spec.as_mut().unwrap().containers[0].env.as_mut().unwrap();
    env.last_mut().unwrap().value = Some("-Dspark.authenticate.secret.file=/mnt/secret/other".into());
    let file = executor_claim(&pod).unwrap().secret_file.expect("the fallback key");
    assert_eq!(file.source, Ok(SecretKeyRef { name: "spark-auth".into(), key: "other".into() }));
}

#[test]
fn with_secret_files_refused_the_app_is_unsupported_and_nothing_is_read() {
    let keyring = Keyring::new();
    let mut source = SecretSource::default();
    source.driver_event(&Event::Apply(driver("drv", "d-uid", "spark-1", "Running")), &keyring);
    source.executor_event(&Event::Apply(file_executor("e1", "spark-1", "d-uid")), &keyring);
    let Lookup::Known(AppAccess::Unsupported(why)) = keyring.lookup("spark-1") else { panic!("unsupported") };
    assert!(why.contains("agent.auth.pods.secretFiles refuse"), "{why}");
}

#[test]
fn with_secret_files_read_the_secret_is_read_once_per_app_and_offered_as_spark_derives_it() {
    let keyring = Keyring::new();
    let (tx, mut rx) = secret_files::channel();
    let mut source = SecretSource::reading_secret_files(tx);
    source.executor_event(&Event::Apply(file_executor("e1", "spark-1", "d-uid")), &keyring);
    assert!(rx.try_recv().is_err(), "nothing is read before the owner check");
    source.driver_event(&Event::Apply(driver("drv", "d-uid", "spark-1", "Running")), &keyring);
    let read = rx.try_recv().expect("a read");
    assert_eq!((read.secret.name.as_str(), read.claim.namespace.as_str()), ("spark-auth", "jobs"));
    source.executor_event(&Event::Apply(file_executor("e2", "spark-1", "d-uid")), &keyring);
    assert!(rx.try_recv().is_err(), "one read per app and Secret, even in flight");
    assert!(matches!(keyring.lookup("spark-1"), Lookup::Unknown));
    source.secret_read(read, Ok(Zeroizing::new(vec![0xff, 0x00, b'a'])), &keyring);
    assert_eq!(secret_of(&keyring, "spark-1").as_deref(), Some(&b"/wBh"[..]), "Base64 of the file's bytes");
    source.executor_event(&Event::Apply(file_executor("e3", "spark-1", "d-uid")), &keyring);
    assert!(rx.try_recv().is_err(), "read once");
}

#[test]
fn a_failed_read_leaves_the_app_unknown_and_is_retried_only_later() {
    let keyring = Keyring::new();
    let (tx, mut rx) = secret_files::channel();
    let mut source = SecretSource::reading_secret_files(tx);
    source.driver_event(&Event::Apply(driver("drv", "d-uid", "spark-1", "Running")), &keyring);
    source.executor_event(&Event::Apply(file_executor("e1", "spark-1", "d-uid")), &keyring);
    let read = rx.try_recv().expect("a read");
    let missing = ReadError::Api { code: 404, reason: "NotFound".into() };
    source.secret_read(read, Err(missing), &keyring);
    assert!(matches!(keyring.lookup("spark-1"), Lookup::Unknown));
    source.executor_event(&Event::Apply(file_executor("e1", "spark-1", "d-uid")), &keyring);
    assert!(rx.try_recv().is_err(), "not again at once");
    // The driver ends: its reads are forgotten; a new driver of the same id reads afresh.
    source.driver_event(&Event::Apply(driver("drv", "d-uid", "spark-1", "Succeeded")), &keyring);
    source.driver_event(&Event::Apply(driver("drv2", "d2-uid", "spark-1", "Running")), &keyring);
    source.executor_event(&Event::Apply(file_executor("e9", "spark-1", "d2-uid")), &keyring);
    assert!(rx.try_recv().is_ok());
}

#[test]
fn a_read_that_lands_after_its_driver_ended_is_dropped() {
    let keyring = Keyring::new();
    let (tx, mut rx) = secret_files::channel();
    let mut source = SecretSource::reading_secret_files(tx);
    source.driver_event(&Event::Apply(driver("drv", "d-uid", "spark-1", "Running")), &keyring);
    source.executor_event(&Event::Apply(file_executor("e1", "spark-1", "d-uid")), &keyring);
    let read = rx.try_recv().expect("a read");
    source.driver_event(&Event::Delete(driver("drv", "d-uid", "spark-1", "Running")), &keyring);
    source.secret_read(read, Ok(Zeroizing::new(b"s".to_vec())), &keyring);
    assert!(matches!(keyring.lookup("spark-1"), Lookup::Unknown));
}

#[test]
fn a_file_not_traceable_to_a_secret_refuses_the_app_with_the_reason() {
    let keyring = Keyring::new();
    let (tx, mut rx) = secret_files::channel();
    let mut source = SecretSource::reading_secret_files(tx);
    let mut pod = file_executor("e1", "spark-1", "d-uid");
    pod.spec.as_mut().unwrap().volumes.as_mut().unwrap()[0].secret = None;
    source.driver_event(&Event::Apply(driver("drv", "d-uid", "spark-1", "Running")), &keyring);
    source.executor_event(&Event::Apply(pod), &keyring);
    assert!(rx.try_recv().is_err());
    let Lookup::Known(AppAccess::Unsupported(why)) = keyring.lookup("spark-1") else { panic!("unsupported") };
    assert!(why.contains("not a secret volume"), "{why}");
}
