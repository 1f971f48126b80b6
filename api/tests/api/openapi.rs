//! `openapi.yaml` against the running server: both list the same operations, every answer the
//! server gives has a status documented for its operation, and every body has the documented
//! shape.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as Json;
use serde_norway::Value as Yaml;
use tidal_api::client::RawResponse;
use tidal_api::server::{
    BODY_READ_TIMEOUT, HEADER_READ_TIMEOUT, MAX_CONNECTIONS, MAX_HEADER_BYTES,
};
use tidal_api::{ApiError, Endpoint, ErrorKind, ServerLimits, VmApi};

use crate::mock::{MockVm, PanickingVm, TestServer};
use crate::raw::{head, RawConnection};

const SPEC: &str = include_str!("../../openapi.yaml");

/// The media type of a streamed answer: one JSON value per line, each of the documented schema.
const NDJSON: &str = "application/x-ndjson";

const ERROR_KINDS: [ErrorKind; 6] = [
    ErrorKind::BadRequest,
    ErrorKind::NotFound,
    ErrorKind::Conflict,
    ErrorKind::GuestRefused,
    ErrorKind::Internal,
    ErrorKind::Timeout,
];

/// One documented operation.
struct Operation<'a> {
    method: String,
    path: String,
    spec: &'a Yaml,
}

struct Spec {
    root: Yaml,
}

impl Spec {
    fn load() -> Self {
        Self {
            root: serde_norway::from_str(SPEC).expect("openapi.yaml is YAML"),
        }
    }

    fn operations(&self) -> Vec<Operation<'_>> {
        let prefix = self.root["servers"][0]["url"]
            .as_str()
            .unwrap()
            .trim_start_matches("http://localhost");
        let paths = self.root["paths"].as_mapping().unwrap();
        let mut operations = Vec::new();
        for (path, item) in paths {
            for (method, spec) in item.as_mapping().unwrap() {
                operations.push(Operation {
                    method: method.as_str().unwrap().to_uppercase(),
                    path: format!("{prefix}{}", path.as_str().unwrap()),
                    spec,
                });
            }
        }
        operations
    }

    /// Follows a `$ref` to what it names, if `node` is one.
    fn resolve<'a>(&'a self, node: &'a Yaml) -> &'a Yaml {
        let Some(reference) = node.get("$ref") else {
            return node;
        };
        let reference = reference.as_str().unwrap();
        let pointer = reference
            .strip_prefix("#/")
            .unwrap_or_else(|| panic!("{reference} is not local"));
        pointer.split('/').fold(&self.root, |node, key| {
            node.get(key)
                .unwrap_or_else(|| panic!("{reference} names nothing"))
        })
    }

    /// A request body built from the schema's examples and defaults.
    fn example(&self, schema: &Yaml) -> Json {
        let schema = self.resolve(schema);
        if let Some(example) = schema.get("example").or_else(|| schema.get("default")) {
            return serde_json::to_value(example).unwrap();
        }
        let properties = schema["properties"].as_mapping().unwrap();
        properties
            .iter()
            .map(|(name, property)| (name.as_str().unwrap().to_owned(), self.example(property)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }

    /// Checks that `value` has the shape `schema` describes, field for field.
    fn check_value(&self, schema: &Yaml, value: &Json, at: &str) {
        let schema = self.resolve(schema);
        if value.is_null() {
            assert_eq!(
                schema.get("nullable"),
                Some(&Yaml::Bool(true)),
                "{at} is null"
            );
            return;
        }
        if let Some(all_of) = schema.get("allOf") {
            for part in all_of.as_sequence().unwrap() {
                self.check_value(part, value, at);
            }
            return;
        }
        match schema["type"].as_str().unwrap() {
            "object" => {
                let object = value.as_object().unwrap_or_else(|| panic!("{at}: {value}"));
                let properties = schema["properties"].as_mapping().unwrap();
                let documented: BTreeSet<&str> =
                    properties.keys().map(|key| key.as_str().unwrap()).collect();
                let sent: BTreeSet<&str> = object.keys().map(String::as_str).collect();
                assert_eq!(sent, documented, "fields of {at}");
                for (name, property) in properties {
                    let name = name.as_str().unwrap();
                    self.check_value(property, &object[name], &format!("{at}.{name}"));
                }
            }
            "array" => {
                let items = value.as_array().unwrap_or_else(|| panic!("{at}: {value}"));
                assert!(!items.is_empty(), "{at}: check a non-empty array");
                for (index, item) in items.iter().enumerate() {
                    self.check_value(&schema["items"], item, &format!("{at}[{index}]"));
                }
            }
            "integer" => assert!(value.is_u64(), "{at}: {value}"),
            "boolean" => assert!(value.is_boolean(), "{at}: {value}"),
            "string" => {
                let text = value.as_str().unwrap_or_else(|| panic!("{at}: {value}"));
                if let Some(allowed) = schema.get("enum") {
                    let allowed = allowed.as_sequence().unwrap();
                    assert!(
                        allowed.iter().any(|a| a.as_str() == Some(text)),
                        "{at}: {text}"
                    );
                }
            }
            other => panic!("{at}: the test does not know type {other}"),
        }
    }

    /// Whether `operation` answers with a stream, which ends only when the server stops.
    fn streams(&self, operation: &Operation) -> bool {
        self.resolve(&operation.spec["responses"]["200"])
            .get("content")
            .and_then(|content| content.get(NDJSON))
            .is_some()
    }

    /// Checks that `response` is one `operation` documents: status, media type and body. A
    /// stream must hold at least one line.
    fn check_answer(&self, operation: &Operation, response: &RawResponse) {
        let what = format!("{} {}", operation.method, operation.path);
        let status = response.status.as_u16().to_string();
        let documented = operation.spec["responses"]
            .get(status.as_str())
            .unwrap_or_else(|| panic!("{what} answered undocumented {status}: {response:?}"));
        let documented = self.resolve(documented);
        let at = format!("{what} {status}");
        let Some(content) = documented.get("content") else {
            assert!(response.body.is_empty(), "{at} has a body");
            return;
        };
        let media_type = response.headers["content-type"].to_str().unwrap();
        let schema = &content
            .get(media_type)
            .unwrap_or_else(|| panic!("{at} answered undocumented {media_type}"))["schema"];
        if media_type == NDJSON {
            let text = std::str::from_utf8(&response.body).unwrap();
            let lines = text
                .strip_suffix('\n')
                .unwrap_or_else(|| panic!("{at}: {text:?} is not newline-terminated lines"));
            for (index, line) in lines.split('\n').enumerate() {
                let value = serde_json::from_str(line).unwrap();
                self.check_value(schema, &value, &format!("{at} line {index}"));
            }
        } else {
            let body: Json = serde_json::from_slice(&response.body).unwrap();
            self.check_value(schema, &body, &at);
        }
    }
}

/// Every `$ref` in the tree under `node`.
fn references(node: &Yaml, found: &mut Vec<Yaml>) {
    match node {
        Yaml::Mapping(mapping) => {
            for (key, value) in mapping {
                if key.as_str() == Some("$ref") {
                    found.push(node.clone());
                } else {
                    references(value, found);
                }
            }
        }
        Yaml::Sequence(items) => items.iter().for_each(|item| references(item, found)),
        _ => {}
    }
}

#[test]
fn spec_and_server_list_the_same_operations() {
    let spec = Spec::load();
    assert!(spec.root["openapi"].as_str().unwrap().starts_with("3."));
    let documented: BTreeSet<(String, String)> = spec
        .operations()
        .into_iter()
        .map(|operation| (operation.method, operation.path))
        .collect();
    let served: BTreeSet<(String, String)> = Endpoint::ALL
        .iter()
        .map(|endpoint| (endpoint.method().to_string(), endpoint.path().to_owned()))
        .collect();
    assert_eq!(documented, served);
}

#[test]
fn every_reference_resolves() {
    let spec = Spec::load();
    let mut found = Vec::new();
    references(&spec.root, &mut found);
    assert!(found.len() > 10);
    for reference in &found {
        spec.resolve(reference);
    }
}

fn send(server: &TestServer, operation: &Operation, body: Option<&str>) -> RawResponse {
    server.send(&operation.method, &operation.path, body)
}

#[test]
fn every_answer_is_documented() {
    let spec = Spec::load();
    for operation in spec.operations() {
        let request_schema = operation
            .spec
            .get("requestBody")
            .map(|body| &body["content"]["application/json"]["schema"]);
        let example = request_schema.map(|schema| spec.example(schema).to_string());

        let success = TestServer::start(MockVm::new());
        let response = if spec.streams(&operation) {
            let mock = MockVm::new();
            TestServer::start(mock.clone()).stream_until_stopped(
                &mock,
                &operation.method,
                &operation.path,
            )
        } else {
            send(&success, &operation, example.as_deref())
        };
        assert!(response.status.is_success(), "{response:?}");
        spec.check_answer(&operation, &response);

        let broken: Arc<dyn VmApi> = Arc::new(PanickingVm);
        let response = send(&TestServer::start(broken), &operation, example.as_deref());
        spec.check_answer(&operation, &response);

        if example.is_none() {
            continue;
        }
        for bad_body in [None, Some("{"), Some(r#"{"foo": 1}"#)] {
            spec.check_answer(&operation, &send(&success, &operation, bad_body));
        }
        let oversized = format!(r#"{{"pad": "{}"}}"#, "x".repeat(70_000));
        let response = send(&success, &operation, Some(&oversized));
        assert_eq!(response.status, 413);
        spec.check_answer(&operation, &response);
        for kind in ERROR_KINDS {
            let mock = MockVm::new();
            mock.fail_with(ApiError::new(kind, format!("failed with {kind:?}")));
            let response = send(&TestServer::start(mock), &operation, example.as_deref());
            assert_eq!(response.status.as_u16(), kind.http_status());
            spec.check_answer(&operation, &response);
        }
        // Only the calls that add memory can find the host short of it.
        let adds_memory = ["/vm.resize", "/vm.resize-zone", "/vm.memory.add"]
            .iter()
            .any(|path| operation.path.ends_with(path));
        if adds_memory {
            let mock = MockVm::new();
            mock.fail_with(ApiError::new(ErrorKind::HostMemory, "the host is short"));
            let response = send(&TestServer::start(mock), &operation, example.as_deref());
            assert_eq!(response.status.as_u16(), 507);
            spec.check_answer(&operation, &response);
        }
    }
}

#[test]
fn a_body_too_slow_is_answered_as_documented() {
    let spec = Spec::load();
    let limits = ServerLimits {
        body_read_timeout: Duration::from_millis(100),
        ..ServerLimits::default()
    };
    let server = TestServer::start_with_limits(MockVm::new(), limits);
    let with_body = spec
        .operations()
        .into_iter()
        .filter(|operation| operation.spec.get("requestBody").is_some());
    for operation in with_body {
        let mut connection = RawConnection::connect(server.socket());
        let declared = "Content-Length: 2\r\n";
        connection.send(head(&operation.method, &operation.path, declared).as_bytes());
        connection.send(b"{");
        let response = connection.read_response();
        assert_eq!(response.status, 408);
        spec.check_answer(&operation, &response);
    }
}

#[test]
fn the_documented_limits_are_the_servers() {
    let description = Spec::load().root["info"]["description"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    for limit in [
        format!(
            "line and headers must arrive within {} s and fit in {} KiB",
            HEADER_READ_TIMEOUT.as_secs(),
            MAX_HEADER_BYTES / 1024
        ),
        format!(
            "A body must arrive whole within {} s",
            BODY_READ_TIMEOUT.as_secs()
        ),
        format!("At most {MAX_CONNECTIONS} connections are served at once"),
    ] {
        assert!(description.contains(&limit), "{limit:?}");
    }
}
