// Signing in when the server requires a token (`--auth required`): a small form that posts the
// token to /dashboard/login, which keeps it in an HttpOnly, SameSite=Strict cookie. Script never
// sees the token again; every later request (fetch and the event stream) carries the cookie.

import { h, notice, replace } from './dom.js';

async function status(credentials) {
  try {
    const response = await fetch('/v1/queues', { headers: { accept: 'application/json' }, credentials });
    return response.status;
  } catch {
    return 0; // unreachable: the pages say so themselves
  }
}

async function problemDetail(response) {
  try {
    const problem = await response.json();
    return problem.detail || `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}

/** Adds "Sign out" to the header (only when the server requires a token). */
function addSignOut() {
  const header = document.querySelector('header.top');
  if (!header || document.getElementById('sign-out')) return;
  const button = h('button', {
    type: 'button',
    id: 'sign-out',
    onclick: async () => {
      await fetch('/dashboard/logout', { method: 'POST', headers: { 'content-type': 'application/json' } });
      window.location.reload();
    },
  }, 'Sign out');
  header.append(button);
}

/** Shows the form in <main> until a token is accepted. */
function showLogin(why) {
  return new Promise((resolve) => {
    const main = document.getElementById('page');
    const input = h('input', {
      type: 'password',
      id: 'token',
      name: 'token',
      autocomplete: 'current-password',
      placeholder: 'dray_…',
      required: true,
      size: 60,
    });
    const message = h('div', {});
    const form = h('form', {
      id: 'login',
      onsubmit: async (event) => {
        event.preventDefault();
        const response = await fetch('/dashboard/login', {
          method: 'POST',
          headers: { 'content-type': 'application/json', accept: 'application/json' },
          body: JSON.stringify({ token: input.value.trim() }),
        });
        if (response.ok) {
          input.value = '';
          addSignOut();
          resolve();
        } else {
          replace(message, notice(await problemDetail(response), 'bad'));
        }
      },
    },
    h('p', {}, h('label', { for: 'token' }, 'API token')),
    h('p', {}, input),
    h('p', {}, h('button', { type: 'submit', class: 'primary' }, 'Sign in')),
    );
    document.title = 'Sign in · Dray';
    replace(
      main,
      h('h1', {}, 'Sign in'),
      why ? notice(why, 'bad') : null,
      h('p', { class: 'muted' }, 'This server requires a token with the read scope (admin to redrive, discard or pause).'),
      message,
      form,
    );
    input.focus();
  });
}

/** Resolves once the dashboard may read: at once when no token is needed or the cookie works. */
export async function ensureSignedIn() {
  const withCookie = await status('same-origin');
  if (withCookie === 401 || withCookie === 403) {
    await showLogin(withCookie === 403 ? 'The saved token cannot read every queue.' : null);
    return;
  }
  if (withCookie === 200 && (await status('omit')) === 401) addSignOut();
}

// A request refused mid-session (the token was revoked or expired): sign in again.
window.addEventListener('dray:unauthorized', () => window.location.reload());
