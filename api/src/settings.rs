//! `/api/v1/settings/<scope>` and `/api/v1/settings/<scope>/schema` (API.md "Apps",
//! Settings): scopes are app ids and `node`; validation and storage are the engine's
//! (`shoal_engine::apps`). An invalid value is 400 naming the failing JSON path; nothing
//! changes. `?to=<source>|all` on `PUT` and `DELETE` records the change as an app command
//! instead (`apps.rs`, [`crate::apps::give`]): 202, validated by the target against its schema.

use shoal_engine::apps::Handle;
use shoal_engine::remote::{Action, Commander};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::apps::SwarmForm;
use crate::error::{self, ApiError};

/// The settings routes; bodies are at most `max_body_bytes`.
pub fn routes(
    apps: Handle,
    commander: Commander,
    max_body_bytes: u64,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let with = move || {
        let apps = apps.clone();
        warp::any().map(move || apps.clone())
    };
    let with_commander = move || {
        let commander = commander.clone();
        warp::any().map(move || commander.clone())
    };
    let schema = warp::path!("api" / "v1" / "settings" / String / "schema")
        .and(warp::get())
        .and(with())
        .then(|scope: String, apps: Handle| async move {
            match apps.schema(&scope).await {
                Ok(s) => warp::reply::json(&s).into_response(),
                Err(e) => error::from_apps(e).into_response(),
            }
        });
    let get = warp::path!("api" / "v1" / "settings" / String)
        .and(warp::get())
        .and(with())
        .then(|scope: String, apps: Handle| async move {
            match apps.settings(&scope).await {
                Ok(s) => warp::reply::json(&s).into_response(),
                Err(e) => error::from_apps(e).into_response(),
            }
        });
    let put = warp::path!("api" / "v1" / "settings" / String)
        .and(warp::put())
        .and(with())
        .and(with_commander())
        .and(warp::query::<SwarmForm>())
        .and(crate::body::limited(max_body_bytes))
        .then(
            move |scope: String,
                  apps: Handle,
                  commander: Commander,
                  q: SwarmForm,
                  body: bytes::Bytes| async move {
                let value: serde_json::Value = match serde_json::from_slice(&body) {
                    Ok(v) => v,
                    Err(e) => {
                        return ApiError::bad_request(format!("malformed JSON body: {e}"))
                            .into_response()
                    }
                };
                if let Some(to) = q.to {
                    let action = Action::Settings {
                        scope,
                        settings: value,
                    };
                    return crate::apps::give(&commander, &to, action).await;
                }
                match apps.set_settings(&scope, value).await {
                    Ok(()) => StatusCode::NO_CONTENT.into_response(),
                    Err(e) => error::from_apps(e).into_response(),
                }
            },
        );
    let delete = warp::path!("api" / "v1" / "settings" / String)
        .and(warp::delete())
        .and(with())
        .and(with_commander())
        .and(warp::query::<SwarmForm>())
        .then(
            move |scope: String, apps: Handle, commander: Commander, q: SwarmForm| async move {
                if let Some(to) = q.to {
                    let action = Action::UnsetSettings { scope };
                    return crate::apps::give(&commander, &to, action).await;
                }
                match apps.unset_settings(&scope).await {
                    Ok(()) => StatusCode::NO_CONTENT.into_response(),
                    Err(e) => error::from_apps(e).into_response(),
                }
            },
        );
    schema.or(get).unify().or(put).unify().or(delete).unify()
}
