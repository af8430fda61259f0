//! The node's Prometheus metrics (API.md "Metrics and dashboard"): the one owner of every metric
//! the node exports at `GET /metrics`.
//!
//! Two kinds of metric, kept apart on purpose:
//! - **Counted where it happens**: [`Metrics::new`] makes typed handles that `node.rs` gives to
//!   each part when it is built (the writer gets [`EventCounters`], the event service
//!   [`PublishLatency`], the HTTP server [`HttpRequests`], the app runtime [`AppMetrics`]). Each
//!   is a set of atomics: counting takes no lock and allocates nothing, so the publish path does
//!   not slow down. Counters only grow (`inc_by` of unsigned values, never reset).
//! - **Read at scrape time**: gauges of state another part already publishes (peers and known
//!   offsets in the swarm's `NetworkState`, stored offsets, file sizes) are not mirrored into
//!   atomics that could drift: the scraper hands a [`Snapshot`] of them to [`Metrics::encode`],
//!   which encodes them next to the registry.
//!
//! Label cardinality is bounded by construction: `route` is a route pattern from a fixed list
//! (chosen by the API, "other" for everything else) and `code` an HTTP status; `source` of
//! `shoal_sync_lag_events` is limited to the [`MAX_LAG_SERIES`] sources furthest behind (the
//! total number of lagging sources is its own gauge); `app` is one series per deployed app.
//!
//! Output: the registry encodes OpenMetrics 1.0 text; [`Format::Prometheus`] turns that into
//! the Prometheus text format 0.0.4 (what a scraper gets unless it asks for OpenMetrics).

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{
    EncodeLabelSet, EncodeMetric, LabelSetEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use shoal_store::{OffsetMap, SourceId};

/// Most `shoal_sync_lag_events{source}` series in one scrape: the sources furthest behind.
/// A swarm of thousands of devices must not make thousands of series per node.
pub const MAX_LAG_SERIES: usize = 20;

/// Upper bounds of the publish-duration buckets, in seconds. BENCHMARKS.md: a lone publish
/// commits in ~0.3-0.6 ms, p99 a few ms, stalls of 5-40 ms under load, and batches of 10,000
/// events take tens of ms; a full disk or a stuck fsync takes seconds.
pub const PUBLISH_BUCKETS: [f64; 16] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Every metric handle of one node; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    events: EventCounters,
    publish: PublishLatency,
    http: HttpRequests,
    apps: AppMetrics,
}

/// What the writer counts: events it committed, by origin.
#[derive(Clone, Debug, Default)]
pub struct EventCounters {
    published: Counter,
    imported: Counter,
}

impl EventCounters {
    /// `n` events of this node were committed.
    pub fn published(&self, n: u64) {
        self.published.inc_by(n);
    }

    /// `n` events of other sources were imported (replicated) and committed.
    pub fn imported(&self, n: u64) {
        self.imported.inc_by(n);
    }
}

/// `shoal_publish_duration_seconds`: from a publish call to its answer (validation, queueing,
/// the group commit). A histogram of atomics: [`PublishLatency::observe`] is three relaxed adds
/// (prometheus-client's own histogram takes a lock per observation).
#[derive(Clone, Debug, Default)]
pub struct PublishLatency(Arc<LatencyCells>);

#[derive(Debug, Default)]
struct LatencyCells {
    /// Per bucket (non-cumulative), the last one is +Inf.
    buckets: [AtomicU64; PUBLISH_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl PublishLatency {
    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = PUBLISH_BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(PUBLISH_BUCKETS.len());
        self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        // Saturates after ~584 years of summed latency.
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .0
            .sum_nanos
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some(s.saturating_add(nanos))
            });
    }

    /// Observations so far (the +Inf bucket's cumulative count).
    pub fn count(&self) -> u64 {
        self.0
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }
}

impl EncodeMetric for PublishLatency {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        // `count` is derived from the buckets read here, so it always equals the +Inf bucket
        // even while publishes land during the scrape.
        let counts: Vec<u64> = self
            .0
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let buckets: Vec<(f64, u64)> = PUBLISH_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(counts.iter().copied())
            .collect();
        let sum = self.0.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, counts.iter().sum(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// `shoal_http_requests_total{route,code}`. `route` must be a pattern from a fixed list (the
/// API's, e.g. `/api/v1/blobs/{cid}`), never a raw path: that is what bounds the series.
#[derive(Clone, Debug, Default)]
pub struct HttpRequests(Family<HttpLabels, Counter>);

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct HttpLabels {
    route: &'static str,
    code: u16,
}

impl EncodeLabelSet for HttpLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), fmt::Error> {
        prometheus_client::encoding::EncodeLabel::encode(
            &("route", self.route),
            encoder.encode_label(),
        )?;
        prometheus_client::encoding::EncodeLabel::encode(
            &("code", self.code),
            encoder.encode_label(),
        )
    }
}

impl HttpRequests {
    /// One request to `route` was answered with `code`. After a series' first request this is
    /// an uncontended read lock and an atomic add.
    pub fn answered(&self, route: &'static str, code: u16) {
        self.0.get_or_create(&HttpLabels { route, code }).inc();
    }
}

/// The app runtime's metrics: `shoal_apps_running` and `shoal_app_restarts_total{app}`.
#[derive(Clone, Debug, Default)]
pub struct AppMetrics {
    running: Gauge,
    restarts: Family<AppLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct AppLabel {
    app: String,
}

impl EncodeLabelSet for AppLabel {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), fmt::Error> {
        prometheus_client::encoding::EncodeLabel::encode(
            &("app", self.app.as_str()),
            encoder.encode_label(),
        )
    }
}

impl AppMetrics {
    /// How many apps run now.
    pub fn set_running(&self, n: u64) {
        self.running.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The supervisor restarted `app` (one series per deployed app).
    pub fn restarted(&self, app: &str) {
        self.restarts
            .get_or_create(&AppLabel {
                app: app.to_string(),
            })
            .inc();
    }
}

/// State read at scrape time (see the module doc).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub peers_connected: u64,
    /// Sources stored here or known from the swarm.
    pub sources_known: u64,
    /// The sources furthest behind, at most [`MAX_LAG_SERIES`], by lag descending.
    pub lags: Vec<(String, u64)>,
    /// Sources with any lag (may exceed `lags.len()`).
    pub sources_lagging: u64,
    pub store_bytes: u64,
    pub blob_bytes: u64,
}

impl Snapshot {
    /// Fills the source facts from what is stored and what the swarm knows: lag = known minus
    /// stored offset (a source known but not stored lags by all its events).
    pub fn with_sources(
        mut self,
        stored: &OffsetMap,
        known: &std::collections::BTreeMap<SourceId, u64>,
    ) -> Self {
        let mut lags: Vec<(String, u64)> = Vec::new();
        for (source, &k) in known {
            let lag = match stored.get(source) {
                Some(s) => k.saturating_sub(s),
                None => k.saturating_add(1),
            };
            if lag > 0 {
                lags.push((source.to_string(), lag));
            }
        }
        self.sources_lagging = lags.len() as u64;
        // Largest first; ties by source so that the chosen series are stable across scrapes.
        lags.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        lags.truncate(MAX_LAG_SERIES);
        self.lags = lags;
        let unknown_here = known.keys().filter(|s| stored.get(s).is_none()).count();
        self.sources_known = (stored.iter().count() + unknown_here) as u64;
        self
    }
}

/// The text format a scraper asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`: what Prometheus understands without negotiation.
    Prometheus,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// A family whose descriptor (help, type) is exported even before its first series, so that
/// scrapers and dashboards see the metric exists (prometheus-client omits empty families).
#[derive(Debug, Clone)]
struct Declared<M>(M);

impl<M: EncodeMetric> EncodeMetric for Declared<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }
}

/// `shoal_sync_lag_events{source}` of one scrape.
#[derive(Debug)]
struct LagSeries(Vec<(String, u64)>);

impl EncodeMetric for LagSeries {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        for (source, lag) in &self.0 {
            encoder
                .encode_family(&[("source", source.as_str())])?
                .encode_gauge(&i64::try_from(*lag).unwrap_or(i64::MAX))?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

fn gauge(v: u64) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every counted metric at zero, registered with its help text.
    pub fn new() -> Self {
        let events = EventCounters::default();
        let publish = PublishLatency::default();
        let http = HttpRequests::default();
        let apps = AppMetrics::default();
        let mut registry = Registry::default();
        registry.register(
            "shoal_events_published",
            "Events published on this node and committed",
            events.published.clone(),
        );
        registry.register(
            "shoal_events_imported",
            "Events of other sources replicated to this node and committed",
            events.imported.clone(),
        );
        registry.register(
            "shoal_publish_duration_seconds",
            "Time from a publish call to its answer (validation, queue, group commit), of committed publishes",
            publish.clone(),
        );
        registry.register(
            "shoal_http_requests",
            "HTTP requests answered by the API server, by route pattern and status code",
            Declared(http.0.clone()),
        );
        registry.register(
            "shoal_apps_running",
            "Apps running on this node",
            apps.running.clone(),
        );
        registry.register(
            "shoal_app_restarts",
            "Restarts of an app by the node's supervisor",
            Declared(apps.restarts.clone()),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry,
                events,
                publish,
                http,
                apps,
            }),
        }
    }

    pub fn events(&self) -> EventCounters {
        self.inner.events.clone()
    }

    pub fn publish_latency(&self) -> PublishLatency {
        self.inner.publish.clone()
    }

    pub fn http(&self) -> HttpRequests {
        self.inner.http.clone()
    }

    pub fn apps(&self) -> AppMetrics {
        self.inner.apps.clone()
    }

    /// The exposition: the counted metrics and `snapshot`, in `format`.
    pub fn encode(&self, snapshot: &Snapshot, format: Format) -> String {
        let mut now = Registry::default();
        now.register(
            "shoal_peers_connected",
            "Peers with an open connection",
            gauge(snapshot.peers_connected),
        );
        now.register(
            "shoal_sources_known",
            "Sources whose events are stored here or known from the swarm",
            gauge(snapshot.sources_known),
        );
        now.register(
            "shoal_sources_lagging",
            "Sources known from the swarm with events not stored here yet",
            gauge(snapshot.sources_lagging),
        );
        now.register(
            "shoal_sync_lag_events",
            format!(
                "Events known from the swarm but not stored here, for the {MAX_LAG_SERIES} \
                 sources furthest behind"
            ),
            LagSeries(snapshot.lags.clone()),
        );
        now.register(
            "shoal_store_bytes",
            "Size of the store's files on disk (database, WAL, shared memory, block files)",
            gauge(snapshot.store_bytes),
        );
        now.register(
            "shoal_blob_bytes_stored",
            "Declared size of the blobs pinned on this node",
            gauge(snapshot.blob_bytes),
        );
        let mut text = String::new();
        // Writing into a String cannot fail; an encoder error would be a bug in a metric.
        let encoded =
            prometheus_client::encoding::text::encode_registry(&mut text, &self.inner.registry)
                .and_then(|()| prometheus_client::encoding::text::encode_registry(&mut text, &now));
        if let Err(e) = encoded {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        match format {
            Format::OpenMetrics => {
                text.push_str("# EOF\n");
                text
            }
            Format::Prometheus => to_prometheus_text(&text),
        }
    }
}

/// OpenMetrics text → Prometheus text 0.0.4: the two differ (for what we export) in that
/// OpenMetrics names a counter family without its `_total` suffix in `# HELP`/`# TYPE` and ends
/// with `# EOF`. Samples are the same lines in both.
fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len() + 256);
    let lines: Vec<&str> = openmetrics.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if *line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let counter_family = |rest: &str| -> Option<String> {
            let name = rest.split(' ').next()?;
            // The family's `# TYPE` line is the HELP line's successor.
            let type_line = if line.starts_with("# HELP ") {
                lines.get(i + 1).copied()?
            } else {
                line
            };
            (type_line == format!("# TYPE {name} counter") && !name.ends_with("_total"))
                .then(|| name.to_string())
        };
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let name = counter_family(rest)?;
            Some(format!("{prefix}{name}_total{}", &rest[name.len()..]))
        });
        match rewritten {
            Some(l) => {
                let _ = writeln!(out, "{l}");
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_their_total_suffix_in_the_prometheus_format() {
        let m = Metrics::new();
        m.events().published(3);
        m.http().answered("/api/v1/events/publish", 201);
        m.publish_latency().observe(Duration::from_micros(400));
        let text = m.encode(&Snapshot::default(), Format::Prometheus);
        assert!(
            text.contains("# TYPE shoal_events_published_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("\nshoal_events_published_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "shoal_http_requests_total{route=\"/api/v1/events/publish\",code=\"201\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("shoal_publish_duration_seconds_bucket{le=\"0.0005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("shoal_publish_duration_seconds_count 1"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
        let open = m.encode(&Snapshot::default(), Format::OpenMetrics);
        assert!(
            open.contains("# TYPE shoal_events_published counter\n"),
            "{open}"
        );
        assert!(open.ends_with("# EOF\n"), "{open}");
    }

    #[test]
    fn lag_series_are_capped_to_the_sources_furthest_behind() {
        let mut stored = OffsetMap::default();
        let mut known = std::collections::BTreeMap::new();
        for i in 0..100u64 {
            let s = SourceId::new(format!("s{i:03}"));
            stored.update(s.clone(), 10);
            known.insert(s, 10 + i);
        }
        // Known, nothing stored: lags by all 5 events (offsets 0..=4).
        known.insert(SourceId::new("fresh"), 4);
        let snap = Snapshot::default().with_sources(&stored, &known);
        assert_eq!(snap.sources_known, 101);
        assert_eq!(snap.sources_lagging, 100, "s000 does not lag, fresh does");
        assert_eq!(snap.lags.len(), MAX_LAG_SERIES);
        assert_eq!(snap.lags[0], ("s099".to_string(), 99));
        assert!(snap.lags.windows(2).all(|w| w[0].1 >= w[1].1));
        let text = Metrics::new().encode(&snap, Format::Prometheus);
        assert_eq!(
            text.matches("shoal_sync_lag_events{").count(),
            MAX_LAG_SERIES
        );
    }

    #[test]
    fn latency_buckets_are_cumulative_and_count_matches() {
        let l = PublishLatency::default();
        for us in [50, 300, 900, 20_000, 30_000_000] {
            l.observe(Duration::from_micros(us));
        }
        assert_eq!(l.count(), 5);
        let m = Metrics::new();
        m.publish_latency().observe(Duration::from_secs(60));
        let text = m.encode(&Snapshot::default(), Format::Prometheus);
        assert!(
            text.contains("shoal_publish_duration_seconds_bucket{le=\"10.0\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("shoal_publish_duration_seconds_bucket{le=\"+Inf\"} 1"),
            "{text}"
        );
    }
}
