//! The server-rendered dashboard: pure functions from (Workspace, ToolBindings, now) to HTML.
//!
//! Everything that comes from upstream tools (titles, authors, states, URLs) and from the
//! cluster (names, condition messages) is untrusted and escaped here, in one place. The live
//! updates (`/events`) send the same `render_dashboard` fragment the first page contains, so
//! there is one renderer and one escaping path.

use crate::api::conditions::{self, CREDENTIALS_VALID, DEGRADED, PROGRESSING, RATE_LIMITED, READY, SYNCED};
use crate::api::duration::{self, DEFAULT_REFRESH_INTERVAL};
use crate::api::toolbinding::{Item, ToolBinding};
use crate::api::{Provider, Workspace};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

/// Same-origin script and style only; no inline script, no inline style, no third party.
/// `require-trusted-types-for` makes the one `innerHTML` in portal.js go through a named
/// policy, so no other sink can be fed a string.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; require-trusted-types-for 'script'; trusted-types hyperpage";

/// A binding's data counts as stale after this many refresh intervals without a successful sync.
pub const STALE_AFTER_INTERVALS: u32 = 3;

/// Items shown per capability on a card (status holds up to 20; the JSON API has them all).
pub const ITEMS_PER_CAPABILITY: usize = 5;

/// HTML-escapes text for element content and quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Only http(s) links are rendered as links; anything else (javascript:, data:) is text.
fn safe_href(url: &str) -> Option<String> {
    let lower = url.trim().to_ascii_lowercase();
    (lower.starts_with("https://") || lower.starts_with("http://")).then(|| escape(url.trim()))
}

/// "just now", "42 s ago", "3 min ago", "5 h ago", "2 d ago"; "in 4 min" for the future.
pub fn ago(then: Timestamp, now: Timestamp) -> String {
    let seconds = now.as_second() - then.as_second();
    let (future, s) = (seconds < 0, seconds.unsigned_abs());
    let text = match s {
        0..5 => return "just now".into(),
        5..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86400 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86400),
    };
    if future { format!("in {text}") } else { format!("{text} ago") }
}

fn time_tag(time: &Time, now: Timestamp) -> String {
    let iso = time.0.to_string();
    format!("<time datetime=\"{iso}\" title=\"{iso}\">{}</time>", ago(time.0, now))
}

/// Something about a binding a person should notice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mark {
    /// No successful sync for too long, or the last sync failed and older data is shown.
    Stale(String),
    /// Degraded=True.
    Degraded(String),
    /// RateLimited=True.
    RateLimited(String),
    /// CredentialsValid=False.
    Credentials(String),
}

impl Mark {
    pub fn kind(&self) -> &'static str {
        match self {
            Mark::Stale(_) => "stale",
            Mark::Degraded(_) => "degraded",
            Mark::RateLimited(_) => "rate-limited",
            Mark::Credentials(_) => "credentials",
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Mark::Stale(_) => "Stale",
            Mark::Degraded(_) => "Degraded",
            Mark::RateLimited(_) => "Rate-limited",
            Mark::Credentials(_) => "Credential problem",
        }
    }

    fn message(&self) -> &str {
        match self {
            Mark::Stale(m) | Mark::Degraded(m) | Mark::RateLimited(m) | Mark::Credentials(m) => m,
        }
    }
}

fn condition_text(c: &Condition) -> String {
    match (c.reason.is_empty(), c.message.is_empty()) {
        (false, false) => format!("{}: {}", c.reason, c.message),
        (false, true) => c.reason.clone(),
        (true, false) => c.message.clone(),
        (true, true) => String::new(),
    }
}

/// The binding's polling interval: its own, else its Workspace's, else the default.
pub fn refresh_interval(binding: &ToolBinding, ws: Option<&Workspace>) -> Duration {
    binding
        .spec
        .refresh_interval
        .as_deref()
        .or(ws.and_then(|w| w.spec.refresh_interval.as_deref()))
        .and_then(|s| duration::parse(s).ok())
        .unwrap_or(DEFAULT_REFRESH_INTERVAL)
}

fn has_items(binding: &ToolBinding) -> bool {
    binding
        .status
        .as_ref()
        .and_then(|s| s.items.as_ref())
        .is_some_and(|i| !(i.code_reviews.is_empty() && i.pipelines.is_empty() && i.tickets.is_empty() && i.artifacts.is_empty()))
}

/// What to flag on a binding's card, worst first.
pub fn marks(binding: &ToolBinding, ws: Option<&Workspace>, now: Timestamp) -> Vec<Mark> {
    let Some(status) = &binding.status else { return Vec::new() };
    let conds = &status.conditions;
    let mut marks = Vec::new();
    if let Some(c) = conditions::find(conds, CREDENTIALS_VALID).filter(|c| c.status == "False") {
        marks.push(Mark::Credentials(condition_text(c)));
    }
    if let Some(c) = conditions::find(conds, DEGRADED).filter(|c| c.status == "True") {
        marks.push(Mark::Degraded(condition_text(c)));
    }
    if let Some(c) = conditions::find(conds, RATE_LIMITED).filter(|c| c.status == "True") {
        let mut text = condition_text(c);
        if let Some(reset) = status.rate_limit.as_ref().and_then(|r| r.reset_at.as_ref()) {
            let _ = write!(text, "{}window resets {}", if text.is_empty() { "" } else { "; " }, ago(reset.0, now));
        }
        marks.push(Mark::RateLimited(text));
    }
    let interval = refresh_interval(binding, ws);
    let limit = interval * STALE_AFTER_INTERVALS;
    let since_success = status.last_successful_sync_time.as_ref().map(|t| (t, now.as_second() - t.0.as_second()));
    let sync_failed = conditions::find(conds, SYNCED).filter(|c| c.status == "False");
    match (since_success, sync_failed) {
        (Some((t, age)), _) if age > limit.as_secs() as i64 => marks.push(Mark::Stale(format!(
            "no successful sync for {} (refresh every {}); showing data from {}",
            ago(t.0, now).trim_end_matches(" ago"),
            humanize(interval),
            t.0
        ))),
        (_, Some(c)) if has_items(binding) => {
            let from = since_success.map(|(t, _)| format!(" from {}", ago(t.0, now))).unwrap_or_default();
            marks.push(Mark::Stale(format!("last sync failed ({}); showing the data{from}", condition_text(c))));
        }
        _ => {}
    }
    marks
}

fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

/// The roll-up tiles: the Workspace's own summary, plus vulnerable artifacts from the bindings
/// (the Workspace summary has no such field). Without a Workspace summary the bindings' counts
/// are summed, so a fresh page is not all zeros while the operator catches up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tiles {
    pub open_pull_requests: i64,
    pub failing_pipelines: i64,
    pub open_tickets: i64,
    pub vulnerable_artifacts: i64,
}

pub fn tiles(ws: Option<&Workspace>, bindings: &[Arc<ToolBinding>]) -> Tiles {
    let summaries: Vec<_> = bindings.iter().filter_map(|b| b.status.as_ref()?.summary.clone()).collect();
    let vulnerable_artifacts = summaries.iter().map(|s| s.vulnerable_artifacts).sum();
    match ws.and_then(|w| w.status.as_ref()?.summary.as_ref()) {
        Some(s) => Tiles {
            open_pull_requests: s.open_pull_requests,
            failing_pipelines: s.failing_pipelines,
            open_tickets: s.open_issues,
            vulnerable_artifacts,
        },
        None => Tiles {
            open_pull_requests: summaries.iter().map(|s| s.code_reviews).sum(),
            failing_pipelines: summaries.iter().map(|s| s.failing_pipelines).sum(),
            open_tickets: summaries.iter().map(|s| s.tickets).sum(),
            vulnerable_artifacts,
        },
    }
}

/// (css class, label, detail) of the Workspace's overall state.
fn workspace_state(ws: Option<&Workspace>) -> (&'static str, String, String) {
    let Some(ws) = ws else { return ("bad", "Not found".into(), String::new()) };
    if ws.spec.suspend {
        return ("warn", "Suspended".into(), "polling is stopped; the data shown is kept from before".into());
    }
    let conds = ws.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    if let Some(c) = conditions::find(conds, DEGRADED).filter(|c| c.status == "True") {
        return ("bad", "Degraded".into(), condition_text(c));
    }
    match conditions::find(conds, READY) {
        Some(c) if c.status == "True" => ("ok", "Ready".into(), String::new()),
        _ if conditions::is_true(conds, PROGRESSING) => {
            ("warn", "Progressing".into(), conditions::find(conds, PROGRESSING).map(condition_text).unwrap_or_default())
        }
        Some(c) => ("bad", "Not ready".into(), condition_text(c)),
        None => ("unknown", "Pending".into(), "the operator has not reported on this workspace yet".into()),
    }
}

fn binding_state(binding: &ToolBinding) -> (&'static str, String) {
    let conds = binding.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    if conditions::is_true(conds, DEGRADED) {
        return ("bad", "Degraded".into());
    }
    match conditions::find(conds, READY) {
        Some(c) if c.status == "True" => ("ok", "Ready".into()),
        Some(c) => ("bad", if c.reason.is_empty() { "Not ready".into() } else { c.reason.clone() }),
        None => ("unknown", "Pending".into()),
    }
}

fn provider_label(provider: Provider) -> &'static str {
    match provider {
        Provider::Github => "GitHub",
        Provider::Gitlab => "GitLab",
        Provider::Jira => "Jira",
        Provider::Jenkins => "Jenkins",
        Provider::Harbor => "Harbor",
    }
}

fn review_word(provider: Provider) -> &'static str {
    if provider == Provider::Gitlab { "Merge requests" } else { "Pull requests" }
}

fn tile(out: &mut String, key: &str, value: i64, label: &str, alert: bool) {
    let class = if alert && value > 0 { "tile alert" } else { "tile" };
    let _ = write!(out, "<div class=\"{class}\" data-tile=\"{key}\"><b class=\"count\">{value}</b><span>{label}</span></div>");
}

fn item_list(out: &mut String, heading: &str, key: &str, items: &[Item], total: Option<i64>, now: Timestamp) {
    if items.is_empty() {
        return;
    }
    let count = total.map(|t| format!(" <small>({t})</small>")).unwrap_or_default();
    let _ = write!(out, "<h3>{heading}{count}</h3><ul class=\"items\" data-capability=\"{key}\">");
    for item in items.iter().take(ITEMS_PER_CAPABILITY) {
        out.push_str("<li class=\"item\">");
        let title = escape(&item.title);
        match safe_href(&item.url) {
            Some(href) => {
                let _ = write!(out, "<a class=\"title\" href=\"{href}\" rel=\"noopener noreferrer\" target=\"_blank\">{title}</a>");
            }
            None => {
                let _ = write!(out, "<span class=\"title\">{title}</span>");
            }
        }
        if let Some(state) = item.state.as_deref().filter(|s| !s.is_empty()) {
            let class: String = state.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>().to_ascii_lowercase();
            let _ = write!(out, " <span class=\"state s-{class}\">{}</span>", escape(state));
        }
        let mut meta = vec![escape(&item.id)];
        if let Some(author) = item.author.as_deref().filter(|a| !a.is_empty()) {
            meta.push(escape(author));
        }
        if let Some(updated) = &item.updated_at {
            meta.push(time_tag(updated, now));
        }
        let _ = write!(out, "<small class=\"meta\">{}</small></li>", meta.join(" · "));
    }
    out.push_str("</ul>");
}

fn card(out: &mut String, binding: &ToolBinding, ws: Option<&Workspace>, now: Timestamp) {
    let name = escape(&binding.name_any());
    let provider = binding.spec.provider;
    let status = binding.status.clone().unwrap_or_default();
    let (state_class, state_label) = binding_state(binding);
    let marks = marks(binding, ws, now);
    let mut classes = String::from("card");
    for m in &marks {
        classes.push(' ');
        classes.push_str(m.kind());
    }
    let _ = write!(
        out,
        "<article class=\"{classes}\" data-binding=\"{name}\" data-provider=\"{}\"><header><h2>{name}</h2><span class=\"provider\">{}</span><span class=\"badge {state_class}\" data-state>{}</span></header>",
        provider.as_str(),
        provider_label(provider),
        escape(&state_label)
    );
    if !marks.is_empty() {
        out.push_str("<ul class=\"marks\">");
        for m in &marks {
            let _ = write!(
                out,
                "<li class=\"mark {kind}\" data-mark=\"{kind}\"><b>{}</b> {}</li>",
                m.label(),
                escape(m.message()),
                kind = m.kind()
            );
        }
        out.push_str("</ul>");
    }
    if let Some(c) = conditions::find(&status.conditions, READY).filter(|c| c.status != "True" && !c.message.is_empty()) {
        let _ = write!(out, "<p class=\"message\">{}</p>", escape(&c.message));
    }
    out.push_str("<dl class=\"facts\">");
    let _ = write!(
        out,
        "<div><dt>Last sync</dt><dd data-fact=\"last-sync\">{}</dd></div>",
        status.last_sync_time.as_ref().map(|t| time_tag(t, now)).unwrap_or_else(|| "never".into())
    );
    if status.last_successful_sync_time.is_some() && status.last_successful_sync_time != status.last_sync_time {
        let _ = write!(
            out,
            "<div><dt>Last success</dt><dd>{}</dd></div>",
            status.last_successful_sync_time.as_ref().map(|t| time_tag(t, now)).unwrap_or_default()
        );
    }
    let rate = match &status.rate_limit {
        Some(r) => {
            let mut text = match (r.remaining, r.limit) {
                (Some(rem), Some(lim)) => format!("{rem} / {lim}"),
                (Some(rem), None) => rem.to_string(),
                (None, Some(lim)) => format!("? / {lim}"),
                (None, None) => "unknown".into(),
            };
            if let Some(reset) = &r.reset_at {
                let _ = write!(text, " <small>resets {}</small>", time_tag(reset, now));
            }
            text
        }
        None => "unknown".into(),
    };
    let _ = write!(out, "<div><dt>Rate limit left</dt><dd data-fact=\"rate-limit\">{rate}</dd></div>");
    out.push_str("</dl>");
    if let Some(items) = &status.items {
        let summary = status.summary.as_ref();
        item_list(out, review_word(provider), "code-reviews", &items.code_reviews, summary.map(|s| s.code_reviews), now);
        item_list(out, "Pipelines", "pipelines", &items.pipelines, summary.map(|s| s.pipelines), now);
        item_list(out, "Tickets", "tickets", &items.tickets, summary.map(|s| s.tickets), now);
        item_list(out, "Artifacts", "artifacts", &items.artifacts, summary.map(|s| s.artifacts), now);
    } else if status.last_successful_sync_time.is_none() {
        out.push_str("<p class=\"empty\">No data yet: this tool has not been synced.</p>");
    }
    out.push_str("</article>");
}

/// The part of the page that changes: header state, tiles and cards. Sent again by `/events`.
pub fn render_dashboard(ws: Option<&Workspace>, name: &str, namespace: &str, bindings: &[Arc<ToolBinding>], now: Timestamp) -> String {
    let mut out = String::new();
    let title = ws.and_then(|w| w.spec.display_name.clone()).filter(|t| !t.is_empty()).unwrap_or_else(|| name.to_string());
    let (class, label, detail) = workspace_state(ws);
    let _ = write!(
        out,
        "<header class=\"top\"><h1 data-title>{}</h1><span class=\"badge {class}\" data-workspace-state>{}</span></header>",
        escape(&title),
        escape(&label)
    );
    if ws.is_none() {
        let _ = write!(
            out,
            "<p class=\"message\">Workspace {} was not found in namespace {}. It may have been deleted, or the portal lacks permission to read it.</p>",
            escape(name),
            escape(namespace)
        );
    } else if !detail.is_empty() {
        let _ = write!(out, "<p class=\"message\">{}</p>", escape(&detail));
    }
    let status = ws.and_then(|w| w.status.as_ref());
    let mut facts = vec![format!("{} tools", bindings.len())];
    if let Some(t) = status.and_then(|s| s.tools.as_ref()) {
        facts.push(format!("{} ready", t.ready));
        if t.failing > 0 {
            facts.push(format!("{} failing", t.failing));
        }
    }
    match status.and_then(|s| s.summary.as_ref()?.last_sync_time.as_ref()) {
        Some(t) => facts.push(format!("last sync {}", time_tag(t, now))),
        None => facts.push("not synced yet".into()),
    }
    let _ = write!(out, "<p class=\"sub\">{}</p>", facts.join(" · "));

    let t = tiles(ws, bindings);
    out.push_str("<section class=\"tiles\" aria-label=\"Roll-up\">");
    tile(&mut out, "open-pull-requests", t.open_pull_requests, "open PRs / MRs", false);
    tile(&mut out, "failing-pipelines", t.failing_pipelines, "failing pipelines", true);
    tile(&mut out, "open-tickets", t.open_tickets, "open tickets", false);
    tile(&mut out, "vulnerable-artifacts", t.vulnerable_artifacts, "artifacts with critical vulnerabilities", true);
    out.push_str("</section><section class=\"cards\" aria-label=\"Tools\">");
    for binding in bindings {
        card(&mut out, binding, ws, now);
    }
    if bindings.is_empty() {
        out.push_str("<p class=\"empty\">No ToolBindings reference this workspace yet.</p>");
    }
    out.push_str("</section>");
    out
}

/// The whole page: a static shell around `render_dashboard`, plus the live-update script.
/// Who is signed in, for the footer (and a sign-out button for a browser session).
pub fn account(username: &str, session: bool) -> String {
    let sign_out = if session { SIGN_OUT_FORM } else { "" };
    format!(" · <span data-account>Signed in as {}</span>{sign_out}", escape(username))
}

/// Sign-out is a POST (a link could be followed by a prefetch).
pub const SIGN_OUT_FORM: &str =
    "<form class=\"sign-out\" method=\"post\" action=\"/auth/sign-out\"><button type=\"submit\" data-sign-out>Sign out</button></form>";

/// The page's title: the Workspace's display name, or its name.
pub fn title(ws: Option<&Workspace>, name: &str) -> String {
    ws.and_then(|w| w.spec.display_name.clone()).filter(|t| !t.is_empty()).unwrap_or_else(|| name.to_string())
}

/// The whole page; `account` is trusted HTML from [`account`] (or empty).
pub fn render(ws: Option<&Workspace>, name: &str, namespace: &str, bindings: &[Arc<ToolBinding>], now: Timestamp, account: &str) -> String {
    page(&title(ws, name), &render_dashboard(ws, name, namespace, bindings, now), account)
}

/// The whole page around a rendered dashboard (trusted HTML from [`render_dashboard`]).
pub fn page(title: &str, dashboard: &str, account: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><meta name=\"color-scheme\" content=\"light dark\"><title>{} · Hyperpage</title><link rel=\"icon\" href=\"/assets/favicon.svg\" type=\"image/svg+xml\"><link rel=\"stylesheet\" href=\"/assets/portal.css\"><script src=\"/assets/portal.js\" defer></script></head><body><main id=\"dashboard\" aria-live=\"polite\">{}</main><footer><span id=\"live\" data-state=\"static\">Static page (updates need JavaScript)</span> · <a href=\"/api/v1/workspace\">JSON API</a>{account}</footer></body></html>",
        escape(title),
        dashboard,
    )
}

/// A page that is not the dashboard (sign-in needed, access refused): `body` is trusted HTML
/// built by the caller with [`escape`].
pub fn notice(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><meta name=\"color-scheme\" content=\"light dark\"><title>{} · Hyperpage</title><link rel=\"icon\" href=\"/assets/favicon.svg\" type=\"image/svg+xml\"><link rel=\"stylesheet\" href=\"/assets/portal.css\"></head><body><main class=\"notice\" data-notice><h1>{}</h1>{body}</main></body></html>",
        escape(title),
        escape(title),
    )
}

pub const SCRIPT: &str = include_str!("assets/portal.js");
pub const STYLE: &str = include_str!("assets/portal.css");
pub const FAVICON: &str = include_str!("assets/favicon.svg");

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-11-02T12:00:00Z";

    fn now() -> Timestamp {
        NOW.parse().unwrap()
    }

    fn binding(yaml: &str) -> Arc<ToolBinding> {
        Arc::new(serde_norway::from_str(yaml).unwrap())
    }

    const GITHUB: &str = r##"
apiVersion: hyperpage.dev/v1alpha1
kind: ToolBinding
metadata: {name: github, namespace: team}
spec:
  workspaceRef: {name: payments}
  provider: github
  credentialsSecretRef: {name: gh, key: token}
  github: {repositories: [acme/payments]}
  refreshInterval: 1m
status:
  conditions:
  - {type: Ready, status: "True", reason: Synced, message: "", lastTransitionTime: "2026-11-02T11:00:00Z"}
  - {type: Synced, status: "True", reason: Synced, message: "", lastTransitionTime: "2026-11-02T11:00:00Z"}
  lastSyncTime: "2026-11-02T11:59:00Z"
  lastSuccessfulSyncTime: "2026-11-02T11:59:00Z"
  rateLimit: {limit: 5000, remaining: 4711, resetAt: "2026-11-02T12:30:00Z"}
  summary: {codeReviews: 7, pipelines: 3, failingPipelines: 1, tickets: 2, artifacts: 0, vulnerableArtifacts: 0}
  items:
    codeReviews:
    - {id: "#42", title: "<script>alert('x')</script> & <b>bold</b>", url: "https://github.com/acme/payments/pull/42", state: open, author: mallory}
    - {id: "#41", title: "Sneaky link", url: "javascript:alert(1)", state: open}
"##;

    #[test]
    fn escapes_markup_and_refuses_script_links() {
        assert_eq!(escape("<script>alert('x')</script>"), "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;");
        assert_eq!(safe_href("javascript:alert(1)"), None);
        assert_eq!(safe_href(" JavaScript:alert(1)"), None);
        assert_eq!(safe_href("https://github.com/a/b/pull/1").as_deref(), Some("https://github.com/a/b/pull/1"));
        assert_eq!(safe_href("https://x/\"onmouseover=\"a").as_deref(), Some("https://x/&quot;onmouseover=&quot;a"));
    }

    #[test]
    fn a_card_renders_upstream_text_as_text_and_only_http_links() {
        let html = render_dashboard(None, "payments", "team", &[binding(GITHUB)], now());
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<b>bold"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;"), "{html}");
        assert!(!html.contains("javascript:"), "{html}");
        assert!(html.contains("<span class=\"title\">Sneaky link</span>"), "{html}");
        assert!(html.contains("4711 / 5000"), "{html}");
        assert!(html.contains("data-binding=\"github\""));
        assert!(html.contains("1 min ago"), "{html}");
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let html = render(None, "payments", "team", &[binding(GITHUB)], now(), &account("<alice>", true));
        assert!(html.contains("<span data-account>Signed in as &lt;alice&gt;</span><form"), "{html}");
        assert!(html.contains("<script src=\"/assets/portal.js\" defer></script>"));
        assert_eq!(html.matches("<script").count(), 1, "only the same-origin script tag");
        assert!(!html.contains(" style=") && !html.contains("<style"), "CSP forbids inline style");
        assert!(!html.contains(" on"), "no inline event handlers");
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe-inline"));
    }

    #[test]
    fn marks_follow_the_conditions_and_the_clock() {
        let fresh = binding(GITHUB);
        assert_eq!(marks(&fresh, None, now()), vec![]);

        // 1m interval: three minutes without a successful sync is stale.
        let later: Timestamp = "2026-11-02T12:03:01Z".parse().unwrap();
        let m = marks(&fresh, None, later);
        assert!(matches!(&m[..], [Mark::Stale(text)] if text.contains("refresh every 1m")), "{m:?}");

        let mut b = (*fresh).clone();
        let status = b.status.as_mut().unwrap();
        for (type_, value, reason) in [
            ("Synced", "False", "UpstreamError"),
            ("Degraded", "True", "CircuitOpen"),
            ("RateLimited", "True", "QuotaReserve"),
            ("CredentialsValid", "False", "TokenRevoked"),
        ] {
            status.conditions.retain(|c| c.type_ != type_);
            status.conditions.push(Condition {
                type_: type_.into(),
                status: value.into(),
                reason: reason.into(),
                message: "m".into(),
                observed_generation: None,
                last_transition_time: Time(now()),
            });
        }
        let kinds: Vec<_> = marks(&b, None, now()).iter().map(Mark::kind).collect();
        assert_eq!(kinds, ["credentials", "degraded", "rate-limited", "stale"], "Synced=False with items kept is stale");
        let html = render_dashboard(None, "payments", "team", &[Arc::new(b)], now());
        assert!(html.contains("class=\"card credentials degraded rate-limited stale\""), "{html}");
        assert!(html.contains("data-mark=\"degraded\""));
    }

    #[test]
    fn the_interval_falls_back_to_the_workspace_then_the_default() {
        let mut b = (*binding(GITHUB)).clone();
        b.spec.refresh_interval = None;
        assert_eq!(refresh_interval(&b, None), DEFAULT_REFRESH_INTERVAL);
        let ws: Workspace = serde_norway::from_str(
            "apiVersion: hyperpage.dev/v1alpha1\nkind: Workspace\nmetadata: {name: payments, namespace: team}\nspec: {refreshInterval: 10m}\n",
        )
        .unwrap();
        assert_eq!(refresh_interval(&b, Some(&ws)), Duration::from_secs(600));
    }

    #[test]
    fn tiles_come_from_the_workspace_summary_and_vulnerabilities_from_the_bindings() {
        let mut harbor = (*binding(GITHUB)).clone();
        harbor.status.as_mut().unwrap().summary.as_mut().unwrap().vulnerable_artifacts = 3;
        let bindings = vec![binding(GITHUB), Arc::new(harbor)];
        assert_eq!(
            tiles(None, &bindings),
            Tiles { open_pull_requests: 14, failing_pipelines: 2, open_tickets: 4, vulnerable_artifacts: 3 }
        );
        let ws: Workspace = serde_norway::from_str(
            "apiVersion: hyperpage.dev/v1alpha1\nkind: Workspace\nmetadata: {name: payments, namespace: team}\nspec: {}\nstatus: {summary: {openPullRequests: 9, failingPipelines: 0, openIssues: 5}}\n",
        )
        .unwrap();
        assert_eq!(
            tiles(Some(&ws), &bindings),
            Tiles { open_pull_requests: 9, failing_pipelines: 0, open_tickets: 5, vulnerable_artifacts: 3 }
        );
    }

    #[test]
    fn relative_times() {
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        assert_eq!(ago(t("2026-11-02T11:59:58Z"), now()), "just now");
        assert_eq!(ago(t("2026-11-02T11:59:00Z"), now()), "1 min ago");
        assert_eq!(ago(t("2026-11-02T09:00:00Z"), now()), "3 h ago");
        assert_eq!(ago(t("2026-11-02T12:30:00Z"), now()), "in 30 min");
    }

    #[test]
    fn a_missing_workspace_is_said_plainly() {
        let html = render_dashboard(None, "payments", "team", &[], now());
        assert!(html.contains("Not found") && html.contains("was not found in namespace team"), "{html}");
    }
}
