//! The `/docs` page: the OpenAPI document as a self-contained HTML page (no scripts, no
//! outside assets, so its CSP can stay strict).

use axum::response::Html;
use utoipa::openapi::OpenApi;

/// Renders the endpoints of `api`.
pub fn page(api: &OpenApi) -> Html<String> {
    let mut rows = String::new();
    for (path, item) in &api.paths.paths {
        let operations = [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("PATCH", &item.patch),
            ("DELETE", &item.delete),
        ];
        for (method, operation) in operations {
            if let Some(operation) = operation {
                let summary = operation
                    .summary
                    .as_deref()
                    .or(operation.description.as_deref())
                    .unwrap_or("");
                let name = operation.operation_id.as_deref().unwrap_or("");
                rows.push_str(&format!(
                    "<tr><td><code>{method}</code></td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>\n",
                    escape(path),
                    escape(name),
                    escape(summary)
                ));
            }
        }
    }
    let description = api.info.description.as_deref().unwrap_or("");
    Html(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\n\
         <style>body{{font-family:sans-serif;max-width:60rem;margin:2rem auto}}td,th{{padding:.3rem .8rem;text-align:left}}</style>\n\
         </head><body><h1>{title}</h1><p>{description}</p>\n\
         <p>The machine-readable document is at <a href=\"/openapi.json\">/openapi.json</a>.</p>\n\
         <table><tr><th>method</th><th>path</th><th>operation</th><th>summary</th></tr>\n{rows}</table></body></html>\n",
        title = escape(&api.info.title),
        description = escape(description),
    ))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
