use super::*;
use k8s_openapi::api::core::v1::{
    KeyToPath, PodSpec, ProjectedVolumeSource, SecretProjection, SecretVolumeSource, VolumeMount, VolumeProjection,
};
use k8s_openapi::ByteString;

const EXEC: &str = "spark-kubernetes-executor";

fn mount(name: &str, at: &str, sub_path: Option<&str>) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: at.into(),
        sub_path: sub_path.map(Into::into),
        ..VolumeMount::default()
    }
}

fn secret_volume(name: &str, secret: &str, items: Option<&[(&str, &str)]>) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            items: items.map(|items| {
                items.iter().map(|(k, p)| KeyToPath { key: (*k).into(), path: (*p).into(), mode: None }).collect()
            }),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// A pod whose executor container has these mounts, next to a sidecar that mounts elsewhere.
fn pod(mounts: Vec<VolumeMount>, volumes: Vec<Volume>) -> Pod {
    Pod {
        spec: Some(PodSpec {
            containers: vec![
                Container {
                    name: "sidecar".into(),
                    volume_mounts: Some(vec![mount("other", "/mnt/secret", None)]),
                    ..Container::default()
                },
                Container { name: EXEC.into(), volume_mounts: Some(mounts), ..Container::default() },
            ],
            volumes: Some(volumes),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

fn key(name: &str, key: &str) -> SecretKeyRef {
    SecretKeyRef { name: name.into(), key: key.into() }
}

fn resolved(pod: &Pod, path: &str) -> Result<SecretKeyRef, String> {
    resolve(pod, Path::new(path), EXEC)
}

#[test]
fn a_file_under_a_secret_mount_is_the_key_of_its_name() {
    // What spark.kubernetes.executor.secrets.spark-auth=/mnt/secret makes (MountSecretsFeatureStep).
    let p = pod(
        vec![mount("spark-local-dir-1", "/var/data", None), mount("spark-auth-volume", "/mnt/secret", None)],
        vec![secret_volume("spark-auth-volume", "spark-auth", None), secret_volume("other", "not-this-one", None)],
    );
    assert_eq!(resolved(&p, "/mnt/secret/key"), Ok(key("spark-auth", "key")));
    assert_eq!(resolved(&p, "/mnt//secret/./key"), Ok(key("spark-auth", "key")), "the same path");
    assert_eq!(resolve(&p, Path::new("/mnt/secret/key"), "sidecar"), Ok(key("not-this-one", "key")));
    let err = resolved(&p, "/mnt/secret/dir/key").unwrap_err();
    assert!(err.contains("puts no key at dir/key"), "{err}");
    let err = resolved(&p, "/mnt/secret").unwrap_err();
    assert!(err.contains("mount point"), "{err}");
}

#[test]
fn items_map_the_file_name_to_its_key() {
    let items = [("auth-secret", "spark/secret.bin"), ("unrelated", "other")];
    let p = pod(vec![mount("s", "/etc/spark-auth", None)], vec![secret_volume("s", "app-secrets", Some(&items))]);
    assert_eq!(resolved(&p, "/etc/spark-auth/spark/secret.bin"), Ok(key("app-secrets", "auth-secret")));
    let err = resolved(&p, "/etc/spark-auth/auth-secret").unwrap_err();
    assert!(err.contains("puts no key at auth-secret"), "with items, only the listed paths exist: {err}");
}

#[test]
fn a_sub_path_mount_shows_that_part_of_the_volume() {
    let items = [("auth-secret", "dir/secret")];
    let p = pod(
        vec![mount("whole", "/opt/secret", Some("key")), mount("mapped", "/opt/dir", Some("dir"))],
        vec![secret_volume("whole", "plain", None), secret_volume("mapped", "mapped", Some(&items))],
    );
    assert_eq!(resolved(&p, "/opt/secret"), Ok(key("plain", "key")), "the file itself is mounted");
    assert_eq!(resolved(&p, "/opt/dir/secret"), Ok(key("mapped", "auth-secret")));
    let mut expr = mount("whole", "/opt/secret", None);
    expr.sub_path_expr = Some("$(POD_NAME)".into());
    let p = pod(vec![expr], vec![secret_volume("whole", "plain", None)]);
    assert!(resolved(&p, "/opt/secret/key").unwrap_err().contains("subPathExpr"));
}

#[test]
fn the_deepest_mount_holding_the_path_is_the_one() {
    let p = pod(
        vec![mount("data", "/mnt", None), mount("s", "/mnt/secret", None)],
        vec![Volume { name: "data".into(), ..Volume::default() }, secret_volume("s", "spark-auth", None)],
    );
    assert_eq!(resolved(&p, "/mnt/secret/key"), Ok(key("spark-auth", "key")));
    let err = resolved(&p, "/mnt/secrets/key").unwrap_err();
    assert!(err.contains("is in volume data, which is not a secret volume"), "/mnt/secrets is not /mnt/secret: {err}");
}

#[test]
fn a_volume_that_is_not_a_secret_or_no_mount_at_all_is_refused() {
    let empty_dir = Volume { name: "s".into(), empty_dir: Some(Default::default()), ..Volume::default() };
    let p = pod(vec![mount("s", "/mnt/secret", None)], vec![empty_dir]);
    assert!(resolved(&p, "/mnt/secret/key").unwrap_err().contains("not a secret volume"));
    let p = pod(vec![mount("s", "/mnt/secret", None)], vec![secret_volume("s", "spark-auth", None)]);
    assert!(resolved(&p, "/etc/key").unwrap_err().contains("no volume mount"));
    assert!(resolved(&p, "key").unwrap_err().contains("not a plain absolute path"));
    assert!(resolved(&p, "/mnt/secret/../secret/key").unwrap_err().contains("not a plain absolute path"));
    let p = pod(vec![mount("gone", "/mnt/secret", None)], vec![]);
    assert!(resolved(&p, "/mnt/secret/key").unwrap_err().contains("not in the pod's spec"));
}

fn projected(sources: Vec<VolumeProjection>) -> Volume {
    Volume {
        name: "p".into(),
        projected: Some(ProjectedVolumeSource { sources: Some(sources), ..ProjectedVolumeSource::default() }),
        ..Volume::default()
    }
}

fn secret_source(name: &str, items: Option<&[(&str, &str)]>) -> VolumeProjection {
    VolumeProjection {
        secret: Some(SecretProjection {
            name: name.into(),
            items: items.map(|items| {
                items.iter().map(|(k, p)| KeyToPath { key: (*k).into(), path: (*p).into(), mode: None }).collect()
            }),
            optional: None,
        }),
        ..VolumeProjection::default()
    }
}

#[test]
fn a_projected_volume_is_followed_only_when_one_secret_alone_can_hold_the_file() {
    let at = || vec![mount("p", "/mnt/p", None)];
    let p = pod(
        at(),
        vec![projected(vec![secret_source("a", Some(&[("k", "auth")])), secret_source("b", Some(&[("k", "x")]))])],
    );
    assert_eq!(resolved(&p, "/mnt/p/auth"), Ok(key("a", "k")));
    let p = pod(at(), vec![projected(vec![secret_source("a", None), secret_source("b", None)])]);
    assert!(resolved(&p, "/mnt/p/auth").unwrap_err().contains("several Secrets"));
    let config_map = VolumeProjection { config_map: Some(Default::default()), ..VolumeProjection::default() };
    let p = pod(at(), vec![projected(vec![secret_source("a", None), config_map])]);
    assert!(resolved(&p, "/mnt/p/auth").unwrap_err().contains("sources other than Secrets"));
}

#[test]
fn the_apis_data_value_already_is_sparks_base64_of_the_file() {
    // A Secret as the API server sends it: `data` values are Base64 (standard, padded) of the
    // bytes. k8s-openapi decodes them; Spark's secretKeyFromFile encodes the file's bytes with
    // java.util.Base64's standard padded encoder. So the secret is the API's own string.
    let json = r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"s"},
        "data":{"key":"/wBh","pad":"YWI=","other":"c2VjcmV0"}}"#;
    for (k, api_value, bytes) in [("key", "/wBh", &[0xff, 0x00, b'a'][..]), ("pad", "YWI=", b"ab")] {
        let secret: Secret = serde_json::from_str(json).unwrap();
        let got = take_key(secret, k).unwrap();
        assert_eq!(&got[..], bytes);
        let mut settings = crate::auth::AuthSettings::new();
        settings.set("spark.authenticate", "true").unwrap();
        let crate::auth::AppAccess::Authenticated(policy) = settings.app_access_from_file(&got) else { panic!() };
        assert_eq!(policy.secret_for("app").unwrap().psk(), api_value.as_bytes());
    }
    let secret: Secret = serde_json::from_str(json).unwrap();
    assert_eq!(take_key(secret, "missing"), Err(ReadError::NoKey));
    let empty = Secret { data: Some([("key".to_string(), ByteString(vec![]))].into()), ..Secret::default() };
    let mut settings = crate::auth::AuthSettings::new();
    settings.set("spark.authenticate", "true").unwrap();
    let access = settings.app_access_from_file(&take_key(empty, "key").unwrap());
    assert!(matches!(access, crate::auth::AppAccess::Unsupported(_)), "Spark refuses an empty file");
}

#[test]
fn read_errors_never_carry_the_apis_answer() {
    let shown = ReadError::Api { code: 404, reason: "NotFound".into() }.to_string();
    assert_eq!(shown, "the API server answered 404 NotFound");
    assert!(ReadError::Api { code: 403, reason: "Forbidden".into() }.to_string().contains("get secrets"));
}
