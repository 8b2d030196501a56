//! `api-server token create|list|revoke`: the operator's side of the API tokens. Works on the database of
//! `DATABASE_URL` (migrations applied first), whether or not a server is running: servers pick changes up
//! within [`crate::auth::REFRESH_INTERVAL`].

use std::io::Write;

use anyhow::Context;
use task_executor_shared::{Role, validate};

use crate::{
    auth,
    config::{Config, TokenCommand},
    store::{self, StoreError, tokens},
};

pub async fn run(config: &Config, command: &TokenCommand) -> anyhow::Result<()> {
    let db = store::connect(&config.database_url, 1).await?;
    let result = match command {
        TokenCommand::Create {
            name,
            role,
            worker_pattern,
        } => create(&db, name, *role, worker_pattern.as_deref()).await,
        TokenCommand::List => list(&db).await,
        TokenCommand::Revoke { name } => match tokens::revoke(&db, name).await {
            Ok(()) => {
                eprintln!("token `{name}` revoked: servers refuse it within 2 seconds");
                Ok(())
            }
            Err(StoreError::Conflict { detail, .. }) => Err(anyhow::anyhow!(detail)),
            Err(e) => Err(e).context("cannot revoke the token"),
        },
    };
    db.close().await.ok();
    result
}

async fn create(
    db: &sea_orm::DatabaseConnection,
    name: &str,
    role: Role,
    worker_pattern: Option<&str>,
) -> anyhow::Result<()> {
    auth::valid_name(name).map_err(anyhow::Error::msg)?;
    let worker_pattern = match (role, worker_pattern) {
        (Role::Worker, Some(p)) => {
            validate::worker_pattern(p).map_err(anyhow::Error::msg)?;
            Some(p.to_owned())
        }
        (Role::Worker, None) => Some(auth::default_worker_pattern(name)),
        (_, Some(_)) => anyhow::bail!("--worker-pattern is only for a `worker` token"),
        (_, None) => None,
    };
    if let Some(p) = &worker_pattern {
        // Patterns are per host: warn when this one and another worker token's may name the same worker
        // (`gpu-*` covers `gpu-1-…`, the workers of a token named `gpu-1`).
        for other in tokens::list(db).await? {
            let Some(q) = other.worker_pattern.as_deref() else {
                continue;
            };
            if validate::glob_matches(p, &format!("{}-x", other.name))
                || validate::glob_matches(q, &format!("{name}-x"))
            {
                eprintln!(
                    "warning: `{p}` and token `{}`'s `{q}` may cover the same worker ids: use names that are \
                     not prefixes of one another, or explicit patterns",
                    other.name
                );
            }
        }
        if validate::glob_matches(p, "worker-001-kind") {
            eprintln!(
                "warning: `{p}` covers the API server's internal worker ids (worker-NNN-kind by default)"
            );
        }
    }
    let token = auth::generate_token()?;
    let created = tokens::create(
        db,
        tokens::NewToken {
            name: name.to_owned(),
            role,
            worker_pattern: worker_pattern.clone(),
            token_hash: auth::hash_token(&token),
        },
    )
    .await;
    match created {
        Ok(_) => {}
        Err(StoreError::Conflict { detail, .. }) => anyhow::bail!(detail),
        Err(e) => return Err(e).context("cannot store the token"),
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{token}")?;
    out.flush()?;
    match worker_pattern {
        Some(p) => eprintln!(
            "token `{name}` created, role `{role}`, for worker ids matching `{p}`: it is shown this once, keep it safe"
        ),
        None => {
            eprintln!("token `{name}` created, role `{role}`: it is shown this once, keep it safe")
        }
    }
    Ok(())
}

async fn list(db: &sea_orm::DatabaseConnection) -> anyhow::Result<()> {
    let all = tokens::list(db).await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<24} {:<8} {:<24} CREATED",
        "NAME", "ROLE", "WORKER PATTERN"
    )?;
    for t in all {
        writeln!(
            out,
            "{:<24} {:<8} {:<24} {}",
            t.name,
            t.role,
            t.worker_pattern.as_deref().unwrap_or("-"),
            t.created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )?;
    }
    Ok(())
}
