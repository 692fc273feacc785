//! `/metrics` counts what happened, and every metric the dashboard, the alert rules and the
//! README name is exported with the type they expect.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use regnotify::simulator::rules::{Fault, FaultRule};

use common::{Harness, event, eventually};

use super::binary::{MissingInput, get, until};
use super::{WAIT, metric_uses, own_parse, parse_exposition, reference_parser, value};

// The Prometheus recorder is one per process, and the suites run side by side in one test
// binary: exact counts need a process of their own, so this test runs in a child process of
// the test binary (`rusty-fork`), with nothing else recording into it.
rusty_fork::rusty_fork_test! {
    #![rusty_fork(timeout_ms = 300_000)]
    #[test]
    fn metrics_count_what_happened_and_health_endpoints_answer() {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(count_what_happened_and_answer_health_checks());
    }
}

async fn count_what_happened_and_answer_health_checks() {
    let rules = vec![
        FaultRule::for_prefix("M-REF-", Fault::result("F", "INVALID_CLIENT")),
        FaultRule::for_prefix("M-U1-", Fault::result("U", "UNKNOWN_EXCEPTION")).times(1),
    ];
    let harness = Harness::new(2, rules).await;
    harness
        .produce(&[
            event("M-OK-1", "R-1"),
            event("M-OK-2", "R-2"),
            event("M-OK-3", "R-3"),
            event("M-REF-1", "R-4"),
            event("M-U1-1", "R-5"),
            event("", "R-6"),
        ])
        .await;
    harness.produce_raw(b"M-POISON", b"\x01garbage", &[]).await;
    // The service's own admin listener, bound before the pipeline starts (`admin.listen` is
    // 127.0.0.1:0 in the harness; the bound address is reported).
    let pipeline = harness.start_pipeline(harness.settings()).await;
    let admin_url = pipeline.admin_url.clone();
    let http = reqwest::Client::new();
    let status = |path: &'static str| {
        let (http, url) = (http.clone(), format!("{admin_url}{path}"));
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    };
    let stats = pipeline.stats.clone();
    eventually("all 7 terminal", WAIT, || stats.terminal() == 7).await;
    assert_eq!(status("/readyz").await, 200, "ready once joined");
    assert_eq!(status("/healthz").await, 200, "healthy while running");

    let text = http
        .get(format!("{admin_url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let samples = parse_exposition(&text);
    let outcomes = "regnotify_outcomes_total";
    assert_eq!(
        value(
            &samples,
            &format!(r#"{outcomes}{{outcome="NOTIFIED",result_code="SUCCESS"}}"#)
        ),
        4.0,
        "{text}"
    );
    assert_eq!(
        value(
            &samples,
            &format!(r#"{outcomes}{{outcome="DEAD_LETTERED",result_code="INVALID_CLIENT"}}"#)
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            &format!(r#"{outcomes}{{outcome="DEAD_LETTERED",result_code="none"}}"#)
        ),
        1.0
    );
    let letters = "regnotify_dead_letters_total";
    assert_eq!(
        value(
            &samples,
            &format!(r#"{letters}{{reason="REQUEST_REFUSED"}}"#)
        ),
        1.0
    );
    assert_eq!(
        value(&samples, &format!(r#"{letters}{{reason="INVALID_EVENT"}}"#)),
        1.0
    );
    assert_eq!(
        value(&samples, &format!(r#"{letters}{{reason="DECODE_ERROR"}}"#)),
        1.0
    );
    let attempts = "regnotify_notify_attempts_total";
    assert_eq!(
        value(
            &samples,
            &format!(r#"{attempts}{{class="success",psp="default"}}"#)
        ),
        4.0
    );
    assert_eq!(
        value(
            &samples,
            &format!(r#"{attempts}{{class="refused",psp="default"}}"#)
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            &format!(r#"{attempts}{{class="unknown",psp="default"}}"#)
        ),
        1.0
    );
    assert_eq!(
        value(&samples, r#"regnotify_retries_total{class="unknown"}"#),
        1.0
    );
    let consumed: f64 = samples
        .iter()
        .filter(|(series, _)| series.starts_with("regnotify_events_consumed_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(consumed, 7.0);
    assert_eq!(
        value(&samples, "regnotify_notify_latency_seconds_count{}"),
        6.0
    );
    assert!(
        samples
            .keys()
            .any(|s| s.starts_with("regnotify_notify_latency_seconds_bucket{le=")),
        "latency is a histogram with buckets"
    );
    assert!(
        samples
            .keys()
            .any(|s| s.starts_with("regnotify_signing_seconds_bucket{"))
    );
    assert!(
        samples
            .keys()
            .any(|s| s.starts_with("regnotify_end_to_end_latency_seconds_bucket{"))
    );
    assert!(
        samples
            .keys()
            .any(|s| s.starts_with("regnotify_build_info{"))
    );
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let kind = line.rsplit(' ').next().unwrap();
        assert_ne!(kind, "summary", "histograms, not summaries: {line}");
    }

    pipeline.stop().await;
}

/// Every metric the Grafana dashboard (`docker/grafana/dashboards/regnotify.json`: every panel's
/// and nested row's `targets[].expr`, and the template variables' queries), the alert rules
/// (`docker/prometheus/alerts.yaml`, which must exist, and `docker/kubernetes/prometheusrule.yaml`
/// when it does: every `expr`) and the README (the metrics table, whose type column must match,
/// and every other `regnotify_…` name it mentions) name is in the real binary's `/metrics`, as
/// `# TYPE` says (checked by our reading of the `# TYPE` lines and by prometheus-client's parser,
/// which must agree). In PromQL a name inside `rate()`, `irate()` or `increase()` must be a
/// counter or a histogram's series, a `_bucket`/`_sum`/`_count` name a histogram's, and
/// `histogram_quantile()` must read a histogram's `_bucket`; a histogram is never named bare. A
/// recording rule's `record:` name is not a metric of the service. The failure lists every name
/// missing or mistyped and where it is named.
///
/// No metric is faked: the service is run through what makes each appear, and the names are
/// checked twice. At start, before any partition is assigned or any event taken (the input topic
/// does not exist yet), every named metric must already be exported except those in
/// [`APPEAR_LATER`], which says what makes each appear. The series exported from start come from
/// `observe::exported` (the label-free metrics, the fixed label sets, one set per configured MPP,
/// and `invariant_violations_total` for every check the pipeline reports: read here from the
/// source, so a check not listed there fails this test) and from the service's own start
/// (`build_info`, `key_version` and `circuit_state` per MPP). Then the topic is created and the
/// service runs through successes, a refusal dead-lettered, an invalid event, an undecodable
/// record and an unknown answer retried, and waits for librdkafka's statistics (every 5 s): now
/// every named metric must be there.
///
/// Exceptions (named but never exported): none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_alerts_and_readme_name_is_exported_with_its_type() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use regnotify::codec::EventEncoder;
    use regnotify::config::InputEncoding;

    let (uses, mut problems) =
        metric_uses::everywhere(std::path::Path::new(env!("CARGO_MANIFEST_DIR")));
    let rules = vec![
        FaultRule::for_prefix("M-REF-", Fault::result("F", "INVALID_CLIENT")),
        FaultRule::for_prefix("M-U1-", Fault::result("U", "UNKNOWN_EXCEPTION")).times(1),
    ];
    let harness = Harness::new(1, rules).await;
    let MissingInput {
        mock,
        input,
        admin,
        service,
        dir: _dir,
    } = MissingInput::start(&harness, 2);
    let bootstrap = mock.bootstrap_servers();
    let metrics_url = format!("{admin}/metrics");
    until(
        "readyz to name the missing input topic",
        &format!("{admin}/readyz"),
        WAIT,
        |status, body| status == 503 && body.contains("UnknownTopicOrPartition"),
    )
    .await;
    let (_, text) = get(&metrics_url).await;
    let from_start: Vec<metric_uses::Use> = uses
        .iter()
        .filter(|use_| !APPEAR_LATER.iter().any(|(name, _)| *name == use_.name))
        .cloned()
        .collect();
    let at_start = metric_uses::check(&from_start, &own_types(&text));

    mock.create_topic(&input, 2, 1).unwrap();
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let encoder = EventEncoder::new(InputEncoding::SingleObject, None, &input).unwrap();
    let mut records = Vec::new();
    for event in [
        event("M-OK-1", "R-1"),
        event("M-OK-2", "R-2"),
        event("M-REF-1", "R-3"),
        event("M-U1-1", "R-4"),
        event("", "R-5"),
    ] {
        let value = encoder.encode(&event).await.unwrap();
        records.push((event.reference_merchant_id.into_bytes(), value));
    }
    records.push((b"M-POISON".to_vec(), b"\x01garbage".to_vec()));
    for (key, value) in &records {
        let record = FutureRecord::to(&input)
            .key(key.as_slice())
            .payload(value.as_slice());
        producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap();
    }
    let sum_of = |samples: &BTreeMap<String, f64>, family: &str| -> f64 {
        samples
            .iter()
            .filter(|(series, _)| series.starts_with(&format!("{family}{{")))
            .map(|(_, value)| value)
            .sum()
    };
    until(
        "all six records to finish",
        &metrics_url,
        WAIT,
        |_, body| {
            let samples = own_parse(body);
            sum_of(&samples, "regnotify_outcomes_total") == 5.0
                && value(
                    &samples,
                    r#"regnotify_dead_letters_total{reason="DECODE_ERROR"}"#,
                ) == 1.0
        },
    )
    .await;
    // The statistics-fed gauges come within 5 s; the test waits a little longer for every name,
    // then reports what is still missing.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        let (_, text) = get(&metrics_url).await;
        if metric_uses::check(&uses, &own_types(&text)).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (_, text) = get(&metrics_url).await;
    service.stop().await;

    let types = own_types(&text);
    if let Some(reference) = reference_parser(&text, &["--families"]) {
        let external: BTreeMap<String, String> = reference
            .lines()
            .filter_map(|line| line.split_once(' '))
            .map(|(name, kind)| (name.to_string(), kind.to_string()))
            .collect();
        assert_eq!(
            types, external,
            "our reading of `# TYPE` and prometheus-client's disagree"
        );
    }
    let at_end = metric_uses::check(&uses, &types);
    problems.extend(
        at_start
            .into_iter()
            .filter(|problem| !at_end.contains(problem))
            .map(|problem| {
                format!("{problem}: at start, before any event (or list it in APPEAR_LATER)")
            }),
    );
    problems.extend(at_end);
    let samples = parse_exposition(&text);
    for check in metric_uses::invariant_checks(std::path::Path::new(env!("CARGO_MANIFEST_DIR"))) {
        let series = format!(r#"regnotify_invariant_violations_total{{check="{check}"}}"#);
        if !samples.contains_key(&series) {
            problems.push(format!(
                "{series}: the pipeline reports this check (src/pipeline) but it is not exported \
                 from start: list it in src/observe/exported.rs"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problem(s) with the metrics the dashboard, the alert rules and the README name:\n{}\n\
         exported: {types:?}",
        problems.len(),
        problems.join("\n")
    );
}

/// The metrics that cannot be exported from start, and what makes each appear: their labels are
/// known only then (partitions, Kafka error codes, result codes), or a zero would be a claim
/// nobody made (brokers up, lag, committed offset).
const APPEAR_LATER: [(&str, &str); 15] = [
    (
        "regnotify_events_consumed_total",
        "an assignment (zero per partition)",
    ),
    (
        "regnotify_skipped_finished_total",
        "an assignment (zero per partition)",
    ),
    (
        "regnotify_partition_restarts_total",
        "an assignment (zero per partition)",
    ),
    (
        "regnotify_stalled_events_total",
        "an assignment (zero per partition)",
    ),
    (
        "regnotify_pending_events",
        "the dispatcher's first turn after an assignment",
    ),
    ("regnotify_consumer_lag_seconds", "an assignment"),
    ("regnotify_oldest_unfinished_seconds", "an assignment"),
    ("regnotify_committed_offset", "the first commit"),
    ("regnotify_finished_note_bytes", "the first commit"),
    ("regnotify_outcomes_total", "the first outcome"),
    (
        "regnotify_consumer_lag",
        "librdkafka's first statistics after an assignment",
    ),
    (
        "regnotify_kafka_brokers_up",
        "librdkafka's first statistics (every 5 s)",
    ),
    (
        "regnotify_consumer_errors_total",
        "the first consumer error of a code",
    ),
    (
        "regnotify_kafka_client_errors_total",
        "the first client error of a code",
    ),
    (
        "regnotify_consumer_error_active",
        "the first consumer error of a code that persists",
    ),
];

/// `name → type` from the `# TYPE` lines of exposition text.
fn own_types(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.trim().to_string()))
        .collect()
}

/// The PromQL, rule-file and README readings the metric-name test relies on.
#[test]
fn metric_uses_are_read_from_promql_rules_dashboards_and_the_readme() {
    use metric_uses::*;

    let names = |expr: &str| -> Vec<(String, Vec<String>)> {
        metric_references(expr)
            .into_iter()
            .map(|reference| (reference.name, reference.calls))
            .collect()
    };
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (le) (rate(regnotify_notify_latency_seconds_bucket{instance=~"$instance",x="regnotify_no"}[$__rate_interval])))"#
        ),
        vec![(
            "regnotify_notify_latency_seconds_bucket".to_string(),
            vec!["histogram_quantile".into(), String::new(), "rate".into()]
        )]
    );
    assert_eq!(
        names(
            "max by (partition) (regnotify_a) / on (partition) group_left regnotify_b offset 5m > 0.5 # regnotify_c"
        ),
        vec![
            ("regnotify_a".to_string(), vec![String::new()]),
            ("regnotify_b".to_string(), vec![])
        ]
    );
    assert_eq!(
        names("up == 0 and label_values(regnotify_x, instance)")[0].1,
        vec!["label_values"]
    );

    let rules = r#"
groups:
  - name: regnotify
    rules:
      - record: regnotify:lag:max
        expr: max(regnotify_consumer_lag)
      - alert: Stalled
        expr: |
          increase(regnotify_stalled_events_total[5m])
            > 0
        for: 1m
      - expr: 'regnotify_in_flight > 0'
        alert: "Busy"
      - alert: Plain
        expr: regnotify_a
          + regnotify_b
        labels:
          severity: page
"#;
    let (expressions, recorded) = rule_expressions(rules);
    assert_eq!(
        expressions,
        vec![
            (
                "max(regnotify_consumer_lag)".to_string(),
                "6 record regnotify:lag:max".to_string()
            ),
            (
                "increase(regnotify_stalled_events_total[5m])\n> 0".to_string(),
                "8 alert Stalled".to_string()
            ),
            (
                "regnotify_in_flight > 0".to_string(),
                "12 alert Busy".to_string()
            ),
            (
                "regnotify_a + regnotify_b".to_string(),
                "15 alert Plain".to_string()
            ),
        ]
    );
    assert!(recorded.contains("regnotify:lag:max"));

    let dashboard = serde_json::json!({
        "panels": [
            {"type": "row", "title": "Open", "id": 1, "panels": []},
            {"type": "stat", "title": "A", "id": 2, "targets": [{"refId": "A", "expr": "regnotify_a"}]},
            {"type": "row", "title": "Closed", "id": 3, "collapsed": true, "panels": [
                {"type": "timeseries", "title": "B", "id": 4, "targets": [{"refId": "B", "expr": "regnotify_b"}]}
            ]}
        ],
        "templating": {"list": [{"name": "instance", "query": {"query": "label_values(regnotify_c, instance)"}}]}
    });
    assert_eq!(
        dashboard_expressions(&dashboard),
        vec![
            (
                "regnotify_a".to_string(),
                "panel \"Open / A\" (id 2), target A".to_string()
            ),
            (
                "regnotify_b".to_string(),
                "panel \"Closed / B\" (id 4), target B".to_string()
            ),
            (
                "label_values(regnotify_c, instance)".to_string(),
                "variable \"instance\"".to_string()
            ),
        ]
    );

    let readme = "x `regnotify_a{psp}` and regnotify_b.\n\
                  | `regnotify_c`, `regnotify_d` | gauge: 0 closed | psp |\n";
    let uses = readme_uses(readme);
    assert_eq!(
        uses.iter()
            .map(|u| (u.name.as_str(), u.how.clone()))
            .collect::<Vec<_>>(),
        vec![
            ("regnotify_a", How::Mentioned),
            ("regnotify_b", How::Mentioned),
            (
                "regnotify_c",
                How::Table {
                    stated: "gauge".into()
                }
            ),
            (
                "regnotify_d",
                How::Table {
                    stated: "gauge".into()
                }
            ),
        ]
    );

    let types: BTreeMap<String, String> = [
        ("regnotify_h", "histogram"),
        ("regnotify_c_total", "counter"),
        ("regnotify_g", "gauge"),
    ]
    .into_iter()
    .map(|(n, t)| (n.to_string(), t.to_string()))
    .collect();
    let promql = |expr: &str| -> Vec<String> {
        let uses: Vec<Use> = metric_references(expr)
            .into_iter()
            .map(|reference| Use {
                name: reference.name,
                place: "here".into(),
                how: How::PromQl {
                    calls: reference.calls,
                },
            })
            .collect();
        check(&uses, &types)
    };
    let fine = "histogram_quantile(0.5, rate(regnotify_h_bucket[5m])) \
                + rate(regnotify_c_total[1m]) + regnotify_g";
    assert_eq!(promql(fine), Vec::<String>::new());
    assert_eq!(
        promql("rate(regnotify_g[5m])"),
        vec!["regnotify_g: rate() of a gauge; it needs a counter (here)"]
    );
    assert_eq!(
        promql("regnotify_h"),
        vec![
            "regnotify_h: a histogram has no series of its bare name: use _bucket, _sum or _count (here)"
        ]
    );
    assert_eq!(
        promql("histogram_quantile(0.5, regnotify_h_count)"),
        vec!["regnotify_h_count: histogram_quantile() needs a histogram's _bucket series (here)"]
    );
    assert_eq!(
        promql("regnotify_g_bucket"),
        vec!["regnotify_g_bucket: regnotify_g is exported as a gauge, which has no _bucket (here)"]
    );
    assert_eq!(
        promql("regnotify_no_such_metric"),
        vec!["regnotify_no_such_metric: not exported (here)"]
    );
    let table = vec![Use {
        name: "regnotify_g".into(),
        place: "README.md:1".into(),
        how: How::Table {
            stated: "counter".into(),
        },
    }];
    assert_eq!(
        check(&table, &types),
        vec!["regnotify_g: the README says counter, exported as a gauge (README.md:1)"]
    );
}
