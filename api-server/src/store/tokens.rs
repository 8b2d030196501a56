//! API tokens: created and revoked by the operator (`api-server token …`), read by the server's token
//! registry. Only the SHA-256 of a token is stored.

use sea_orm::{ActiveModelTrait, DatabaseConnection, EntityTrait, QueryOrder, Set, SqlErr};
use task_executor_shared::Role;

use super::{StoreError, StoreResult, entity::api_token, now};

/// A token to store: its name, role, pattern and hash (the token itself never reaches the store).
pub struct NewToken {
    pub name: String,
    pub role: Role,
    pub worker_pattern: Option<String>,
    pub token_hash: String,
}

/// Stores a new token; a name already in use is a conflict.
pub async fn create(db: &DatabaseConnection, new: NewToken) -> StoreResult<api_token::Model> {
    let model = api_token::ActiveModel {
        name: Set(new.name.clone()),
        role: Set(new.role),
        worker_pattern: Set(new.worker_pattern),
        token_hash: Set(new.token_hash),
        created_at: Set(now()),
    };
    match model.insert(db).await {
        Ok(m) => Ok(m),
        Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            Err(StoreError::Conflict {
                kind: "token_exists",
                detail: format!("a token named `{}` exists: revoke it first", new.name),
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Every token, by name.
pub async fn list(db: &DatabaseConnection) -> StoreResult<Vec<api_token::Model>> {
    Ok(api_token::Entity::find()
        .order_by_asc(api_token::Column::Name)
        .all(db)
        .await?)
}

/// Deletes a token: from then on (within the registry's refresh interval) it is refused.
pub async fn revoke(db: &DatabaseConnection, name: &str) -> StoreResult<()> {
    let done = api_token::Entity::delete_by_id(name.to_owned())
        .exec(db)
        .await?;
    if done.rows_affected == 0 {
        return Err(StoreError::Conflict {
            kind: "token_not_found",
            detail: format!("no token is named `{name}`"),
        });
    }
    Ok(())
}
