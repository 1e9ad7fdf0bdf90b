//! `dray tokens`: create, list, revoke API tokens (through `/v1/tokens`, admin scope).

use dray_api::{Token, TokenCreate};

use crate::cli::{TokenCreateArgs, TokensCommand};
use crate::output;

pub async fn run(client: &dray_client::Client, command: TokensCommand, json: bool) -> anyhow::Result<()> {
    match command {
        TokensCommand::Create(args) => create(client, args, json).await,
        TokensCommand::List => {
            let list = client.tokens().await?;
            if json {
                return output::json(&list);
            }
            if list.tokens.is_empty() {
                println!("no tokens");
                return Ok(());
            }
            let mut table = output::table(["ID", "NAME", "SCOPES", "CREATED", "EXPIRES", "REVOKED"]);
            for t in &list.tokens {
                table.add_row(vec![
                    t.id.clone(),
                    t.name.clone(),
                    t.scopes.join(" "),
                    output::time(&t.created_at),
                    output::time_opt(t.expires_at.as_deref()),
                    revoked(t),
                ]);
            }
            output::print_table(&mut table);
            Ok(())
        }
        TokensCommand::Revoke { id } => {
            let token = client.token_revoke(&id).await?;
            if json {
                return output::json(&token);
            }
            println!("token {} ({}) revoked", token.id, token.name);
            Ok(())
        }
    }
}

async fn create(client: &dray_client::Client, args: TokenCreateArgs, json: bool) -> anyhow::Result<()> {
    let request = TokenCreate { name: args.name, scopes: args.scopes, expires_at: args.expires_at };
    let created = client.token_create(request).await?;
    if json {
        return output::json(&created);
    }
    let mut table = output::fields();
    table.add_row(vec!["id".to_owned(), created.id.clone()]);
    table.add_row(vec!["name".to_owned(), created.name.clone()]);
    table.add_row(vec!["scopes".to_owned(), created.scopes.join(" ")]);
    table
        .add_row(vec!["expires_at".to_owned(), created.expires_at.as_deref().map_or("never".to_owned(), output::time)]);
    output::print_table(&mut table);
    // On a line of its own, never wrapped by the table.
    println!("token {}", created.token);
    println!("\nThe token is shown this once: store it now (Dray keeps only its hash).");
    Ok(())
}

fn revoked(t: &Token) -> String {
    match (&t.revoked_at, t.revoked) {
        (Some(at), _) => output::time(at),
        (None, true) => "yes".to_owned(),
        (None, false) => "no".to_owned(),
    }
}
