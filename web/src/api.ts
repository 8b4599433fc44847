/**
 * The console's one way to the API: every call carries the key from the sign-in form as `Authorization: Bearer` (kept
 * in sessionStorage: this tab only), and an error answer becomes an ApiError whose message is the API's
 * `CODE: message`, shown as it is.
 */
const KEY_STORAGE = 'kindling.apiKey';

export const session: {
  apiKey: string | null;
  /** Called on a 401: the key is no longer good (revoked, or the server restarted with other keys). */
  onUnauthorized: (message: string) => void;
} = { apiKey: sessionStorage.getItem(KEY_STORAGE), onUnauthorized: () => undefined };

export function rememberKey(key: string | null): void {
  session.apiKey = key;
  if (key === null) sessionStorage.removeItem(KEY_STORAGE);
  else sessionStorage.setItem(KEY_STORAGE, key);
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly code: string | null = null,
  ) {
    super(message);
  }
}

export async function api(path: string, init: RequestInit = {}): Promise<Response> {
  const headers = new Headers(init.headers);
  if (session.apiKey) headers.set('authorization', `Bearer ${session.apiKey}`);
  const response = await fetch(path, { ...init, headers });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    let code: string | null = null;
    try {
      const body = (await response.json()) as { error?: { code?: string; message?: string } };
      if (body.error) {
        message = `${body.error.code}: ${body.error.message}`;
        code = body.error.code ?? null;
      }
    } catch {
      // not JSON
    }
    if (response.status === 401) session.onUnauthorized(message);
    throw new ApiError(response.status, message, code);
  }
  return response;
}

export const json = async <T>(path: string, init?: RequestInit): Promise<T> => (await (await api(path, init)).json()) as T;

/** A JSON request body with its content type. */
export const jsonBody = (value: unknown): RequestInit => ({ headers: { 'content-type': 'application/json' }, body: JSON.stringify(value) });

export const errorText = (error: unknown): string => (error instanceof Error ? error.message : String(error));
