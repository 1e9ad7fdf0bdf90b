//! `dray locks`: list, show and force-release locks (an operator's view, through `/v1/locks`),
//! and acquire and renew them from scripts. `acquire` prints only the fencing token, so a shell
//! script can hand it to the resource it protects: `token=$(dray locks acquire report --owner
//! "$HOSTNAME:$$" --ttl-ms 30000)`.

use dray_api::{LockAcquireRequest, LockGrant, LockHolder, LockInfo, LockQuery, LockRenewRequest};

use crate::cli::{LockAcquireArgs, LocksCommand};
use crate::output;

pub async fn run(client: &dray_client::Client, command: LocksCommand, json: bool) -> anyhow::Result<()> {
    match command {
        LocksCommand::List { after, limit } => {
            let list = client.locks(LockQuery { after, limit: Some(limit) }).await?;
            if json {
                return output::json(&list);
            }
            if list.locks.is_empty() {
                println!("no locks held");
                return Ok(());
            }
            let mut table = output::table(["NAME", "PERMITS", "OWNER", "FENCING TOKEN", "LEFT", "WAITERS"]);
            for lock in &list.locks {
                for (i, h) in lock.holders.iter().enumerate() {
                    let (name, permits, waiters) = if i == 0 {
                        (lock.name.clone(), lock.permits.to_string(), lock.waiters.to_string())
                    } else {
                        (String::new(), String::new(), String::new())
                    };
                    table.add_row(vec![
                        name,
                        permits,
                        h.owner.clone(),
                        h.fencing_token.to_string(),
                        output::duration_ms(h.left_ms),
                        waiters,
                    ]);
                }
            }
            output::print_table(&mut table);
            if let Some(next) = list.next {
                println!("more: --after {next}");
            }
            Ok(())
        }
        LocksCommand::Show { name } => {
            let lock = client.lock(&name).await?;
            if json {
                return output::json(&lock);
            }
            show(&lock);
            Ok(())
        }
        LocksCommand::Release { name, fencing_token, all } => {
            let token = if all { None } else { fencing_token };
            let released = client.lock_force_release(&name, token).await?;
            if json {
                return output::json(&released);
            }
            if released.released.is_empty() {
                println!("lock {name}: nothing was held");
            }
            for h in &released.released {
                println!("lock {name}: released owner {:?} (fencing token {})", h.owner, h.fencing_token);
            }
            Ok(())
        }
        LocksCommand::Acquire(args) => acquire(client, args, json).await,
        LocksCommand::Renew { name, owner, fencing_token, ttl_ms } => {
            let grant = client.lock_renew(&name, &LockRenewRequest { owner, fencing_token, ttl_ms }).await?;
            print_grant(&grant, json)
        }
    }
}

async fn acquire(client: &dray_client::Client, args: LockAcquireArgs, json: bool) -> anyhow::Result<()> {
    let request =
        LockAcquireRequest { owner: args.owner, ttl_ms: args.ttl_ms, wait_ms: args.wait_ms, permits: args.permits };
    let grant = client.lock_acquire(&args.name, &request).await?;
    print_grant(&grant, json)
}

fn print_grant(grant: &LockGrant, json: bool) -> anyhow::Result<()> {
    if json {
        return output::json(grant);
    }
    println!("{}", grant.fencing_token);
    Ok(())
}

fn show(lock: &LockInfo) {
    let mut fields = output::fields();
    fields.add_row(vec!["name".to_owned(), lock.name.clone()]);
    fields.add_row(vec!["permits".to_owned(), format!("{} ({} held)", lock.permits, lock.holders.len())]);
    fields.add_row(vec!["waiters".to_owned(), format!("{} on this node", lock.waiters)]);
    output::print_table(&mut fields);
    let mut table = output::table(["OWNER", "FENCING TOKEN", "ACQUIRED", "DEADLINE", "LEFT", "TTL"]);
    for h in &lock.holders {
        table.add_row(holder_row(h));
    }
    output::print_table(&mut table);
}

fn holder_row(h: &LockHolder) -> Vec<String> {
    vec![
        h.owner.clone(),
        h.fencing_token.to_string(),
        output::time(&h.acquired_at),
        output::time(&h.deadline),
        output::duration_ms(h.left_ms),
        output::duration_ms(h.ttl_ms),
    ]
}
