//! The server-rendered dashboard. Everything from upstream is untrusted and escaped.

use crate::api::conditions::{self, READY};
use crate::api::{ToolBinding, Workspace};
use kube::ResourceExt;
use std::fmt::Write;
use std::sync::Arc;

/// No inline scripts, no third-party anything.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

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

fn ready_badge(conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]) -> (String, String) {
    match conditions::find(conditions, READY) {
        Some(c) if c.status == "True" => ("ok".into(), "Ready".into()),
        Some(c) => ("bad".into(), c.reason.clone()),
        None => ("unknown".into(), "Pending".into()),
    }
}

pub fn render(ws: Option<&Workspace>, name: &str, bindings: &[Arc<ToolBinding>]) -> String {
    let mut body = String::new();
    let title = ws.and_then(|w| w.spec.display_name.clone()).unwrap_or_else(|| name.to_string());
    let status = ws.and_then(|w| w.status.clone()).unwrap_or_default();
    let (class, label) = ready_badge(&status.conditions);
    let _ = write!(body, "<header><h1>{}</h1><span class=\"badge {class}\">{}</span></header>", escape(&title), escape(&label));
    let summary = status.summary.unwrap_or_default();
    let _ = write!(
        body,
        "<section class=\"tiles\"><div class=\"tile\"><b>{}</b>open pull requests</div><div class=\"tile\"><b>{}</b>failing pipelines</div><div class=\"tile\"><b>{}</b>open issues</div></section>",
        summary.open_pull_requests, summary.failing_pipelines, summary.open_issues
    );
    body.push_str("<section class=\"cards\">");
    for binding in bindings {
        let status = binding.status.clone().unwrap_or_default();
        let (class, label) = ready_badge(&status.conditions);
        let message = conditions::find(&status.conditions, READY).map(|c| c.message.clone()).unwrap_or_default();
        let _ = write!(
            body,
            "<article class=\"card\"><h2>{} <small>{}</small></h2><span class=\"badge {class}\">{}</span><p>{}</p>",
            escape(&binding.name_any()),
            escape(binding.spec.provider.as_str()),
            escape(&label),
            escape(&message)
        );
        if let Some(items) = &status.items {
            body.push_str("<ul>");
            for item in items.code_reviews.iter().chain(&items.pipelines).chain(&items.tickets).chain(&items.artifacts) {
                match safe_href(&item.url) {
                    Some(href) => {
                        let _ = write!(body, "<li><a href=\"{href}\" rel=\"noopener noreferrer\">{}</a></li>", escape(&item.title));
                    }
                    None => {
                        let _ = write!(body, "<li>{}</li>", escape(&item.title));
                    }
                }
            }
            body.push_str("</ul>");
        }
        body.push_str("</article>");
    }
    body.push_str("</section>");
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{} · Hyperpage</title><style>{STYLE}</style></head><body>{body}</body></html>",
        escape(&title)
    )
}

const STYLE: &str = ":root{color-scheme:light dark;font-family:system-ui,sans-serif}body{margin:0 auto;max-width:72rem;padding:1rem}header{display:flex;gap:1rem;align-items:center}.tiles,.cards{display:grid;gap:1rem;grid-template-columns:repeat(auto-fit,minmax(14rem,1fr));margin:1rem 0}.tile,.card{border:1px solid #8885;border-radius:.5rem;padding:1rem}.tile b{display:block;font-size:2rem}.badge{border-radius:1rem;padding:.1rem .6rem;font-size:.85rem}.ok{background:#1a7f3733}.bad{background:#cf222e33}.unknown{background:#8883}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_refuses_script_links() {
        assert_eq!(escape("<script>alert('x')</script>"), "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;");
        assert_eq!(safe_href("javascript:alert(1)"), None);
        assert_eq!(safe_href("https://github.com/a/b/pull/1").as_deref(), Some("https://github.com/a/b/pull/1"));
    }
}
