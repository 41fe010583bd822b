//! The web dashboard on the admin listener: `GET /` its page, `GET /assets/{id}` its scripts
//! and style sheet. Everything is embedded in the binary (no Node, no CDN); the page holds
//! no data, every figure comes from `/api/*` with the bearer token the user signs in with,
//! so both routes are open.
//!
//! Assets are addressed by their content hash (`app.<xxh3>.js`, cached for a year as
//! immutable). The scripts are ES modules importing one another (`"./api.js"`): each
//! module's imports are rewritten to the hashed names of the modules before it in
//! [`SOURCES`] before its own hash is taken, so a module's name changes whenever anything
//! it loads changes. `index.html` names the hashed files and is revalidated on every load.
//! Every answer carries a strict `Content-Security-Policy` (no inline script or style).

use std::sync::OnceLock;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Response, StatusCode};
use schemars::JsonSchema;
use xxhash_rust::xxh3::xxh3_64;

use super::api::{schema, Doc};
use super::routes::{Auth, Call, Route, Run};
use crate::body::ResponseBody;
use crate::edge::error_response;

/// The page's policy: scripts, styles, images and API calls from the admin listener only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
/// Hashed assets never change under their name.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// One embedded file: its name as the sources refer to it, its type and its text.
struct Source {
    name: &'static str,
    content_type: &'static str,
    text: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The assets, each after every module it imports (the order the hashes are taken in).
const SOURCES: &[Source] = &[
    Source {
        name: "style.css",
        content_type: CSS,
        text: include_str!("dashboard/style.css"),
    },
    Source {
        name: "dom.js",
        content_type: JS,
        text: include_str!("dashboard/dom.js"),
    },
    Source {
        name: "api.js",
        content_type: JS,
        text: include_str!("dashboard/api.js"),
    },
    Source {
        name: "chart.js",
        content_type: JS,
        text: include_str!("dashboard/chart.js"),
    },
    Source {
        name: "overview.js",
        content_type: JS,
        text: include_str!("dashboard/overview.js"),
    },
    Source {
        name: "slos.js",
        content_type: JS,
        text: include_str!("dashboard/slos.js"),
    },
    Source {
        name: "upstreams.js",
        content_type: JS,
        text: include_str!("dashboard/upstreams.js"),
    },
    Source {
        name: "forms.js",
        content_type: JS,
        text: include_str!("dashboard/forms.js"),
    },
    Source {
        name: "tenants.js",
        content_type: JS,
        text: include_str!("dashboard/tenants.js"),
    },
    Source {
        name: "keys.js",
        content_type: JS,
        text: include_str!("dashboard/keys.js"),
    },
    Source {
        name: "calls.js",
        content_type: JS,
        text: include_str!("dashboard/calls.js"),
    },
    Source {
        name: "analytics.js",
        content_type: JS,
        text: include_str!("dashboard/analytics.js"),
    },
    Source {
        name: "ai.js",
        content_type: JS,
        text: include_str!("dashboard/ai.js"),
    },
    Source {
        name: "chaos.js",
        content_type: JS,
        text: include_str!("dashboard/chaos.js"),
    },
    Source {
        name: "app.js",
        content_type: JS,
        text: include_str!("dashboard/app.js"),
    },
];

/// The page, with `{{style.css}}`, `{{app.js}}` and `{{preload}}` filled in when built.
const INDEX: &str = include_str!("dashboard/index.html");

/// An asset as served.
struct Asset {
    /// `app.js`.
    name: &'static str,
    /// `app.0123456789abcdef.js`: what `/assets/{id}` takes.
    file: String,
    content_type: &'static str,
    body: Bytes,
}

/// The assets with their hashed names, and the page naming them.
struct Built {
    assets: Vec<Asset>,
    index: Bytes,
}

/// Built once, at the first request for the page or an asset.
fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(build)
}

fn build() -> Built {
    let mut assets: Vec<Asset> = Vec::with_capacity(SOURCES.len());
    for source in SOURCES {
        let mut text = source.text.to_owned();
        for earlier in &assets {
            text = text.replace(
                &format!("\"./{}\"", earlier.name),
                &format!("\"./{}\"", earlier.file),
            );
        }
        let (stem, extension) = source.name.rsplit_once('.').unwrap_or((source.name, ""));
        let file = format!("{stem}.{:016x}.{extension}", xxh3_64(text.as_bytes()));
        assets.push(Asset {
            name: source.name,
            file,
            content_type: source.content_type,
            body: Bytes::from(text),
        });
    }
    let url = |name: &str| {
        assets
            .iter()
            .find(|a| a.name == name)
            .map(|a| format!("/assets/{}", a.file))
            .unwrap_or_default()
    };
    // Every module preloaded at once, rather than found one import at a time.
    let preload: Vec<String> = assets
        .iter()
        .filter(|a| a.content_type == JS)
        .map(|a| format!("<link rel=\"modulepreload\" href=\"/assets/{}\">", a.file))
        .collect();
    let index = INDEX
        .replace("{{style.css}}", &url("style.css"))
        .replace("{{app.js}}", &url("app.js"))
        .replace("{{preload}}", &preload.join("\n    "));
    Built {
        assets,
        index: Bytes::from(index),
    }
}

/// The headers every dashboard answer carries.
fn secure(response: &mut Response<ResponseBody>) {
    let headers = response.headers_mut();
    let fixed: [(HeaderName, &'static str); 4] = [
        (http::header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (http::header::X_FRAME_OPTIONS, "DENY"),
        (http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (http::header::REFERRER_POLICY, "no-referrer"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

fn file(body: Bytes, content_type: &'static str, cache: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(body));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    secure(&mut response);
    response
}

/// `GET /`: the page.
fn index(_: &Call) -> Response<ResponseBody> {
    file(built().index.clone(), "text/html; charset=utf-8", "no-cache")
}

/// `GET /assets/{id}`: a script or the style sheet by its hashed name; 404 for any other.
fn asset(call: &Call) -> Response<ResponseBody> {
    match built().assets.iter().find(|a| a.file == call.id) {
        Some(asset) => file(asset.body.clone(), asset.content_type, IMMUTABLE),
        None => {
            let mut response = error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                "No such dashboard asset (its name changes with its content: reload the page).",
                &call.request_id,
            );
            response
                .headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            secure(&mut response);
            response
        }
    }
}

/// The page (HTML), for the OpenAPI document.
#[derive(JsonSchema)]
#[schemars(description = "The dashboard's HTML page")]
pub struct DashboardPage(pub String);

/// A script or style sheet, for the OpenAPI document.
#[derive(JsonSchema)]
#[schemars(description = "A dashboard script (text/javascript) or style sheet (text/css)")]
pub struct DashboardAsset(pub String);

/// The dashboard's routes, in the admin API's one route table.
pub static ROUTES: &[Route] = &[
    Route {
        method: Method::GET,
        path: "/",
        auth: Auth::Open,
        handler: index,
        run: Run::Inline,
        doc: Doc {
            summary: "The web dashboard (it signs in with an admin token and reads /api/*).",
            ok: (200, schema::<DashboardPage>),
            content_type: "text/html",
            errors: &[],
            query: &[],
        },
    },
    Route {
        method: Method::GET,
        path: "/assets/{id}",
        auth: Auth::Open,
        handler: asset,
        run: Run::Inline,
        doc: Doc {
            summary: "A dashboard script or style sheet by its content-hashed name, cached as immutable.",
            ok: (200, schema::<DashboardAsset>),
            content_type: "text/javascript",
            errors: &[(404, "No asset has this name.")],
            query: &[],
        },
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_import_names_a_hashed_module_and_the_page_names_existing_assets() {
        let built = build();
        let files: Vec<&str> = built.assets.iter().map(|a| a.file.as_str()).collect();
        for asset in &built.assets {
            let text = std::str::from_utf8(&asset.body).unwrap();
            for import in text.split("from \"./").skip(1) {
                let target = import.split('"').next().unwrap();
                assert!(files.contains(&target), "{} imports {target}", asset.name);
            }
        }
        let index = std::str::from_utf8(&built.index).unwrap();
        assert!(!index.contains("{{"), "{index}");
        for link in index.split("\"/assets/").skip(1) {
            let target = link.split('"').next().unwrap();
            assert!(files.contains(&target), "index.html names {target}");
        }
        // No inline script or style: the policy would refuse them.
        assert!(
            !index.contains("<script>") && !index.contains("style="),
            "{index}"
        );
    }

    #[test]
    fn a_module_name_changes_when_a_module_it_imports_changes() {
        let built = build();
        let app = built.assets.iter().find(|a| a.name == "app.js").unwrap();
        let api = built.assets.iter().find(|a| a.name == "api.js").unwrap();
        let text = std::str::from_utf8(&app.body).unwrap();
        assert!(
            text.contains(&api.file),
            "app.js imports api.js by its hashed name"
        );
        assert!(app.file.starts_with("app.") && app.file.ends_with(".js") && app.file.len() == 23);
    }
}
