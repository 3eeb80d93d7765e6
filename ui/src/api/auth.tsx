// Who is logged in (GET /api/v1/auth/me) and what they may do. Until the auth endpoints exist on the API
// (404 there), the UI runs as an anonymous admin so it stays usable on an API without auth.
import { createContext, useContext, type ReactNode } from "react";
import { useQuery, useQueryClient } from "@tanstack/react-query";
import { api, ApiError } from "./client";

export const ROLES = ["viewer", "operator", "engineer", "admin"] as const;
export type Role = (typeof ROLES)[number];

export interface Me {
  username: string;
  role: Role;
  permissions: string[];
  /** The API has no auth endpoints (a build before log-in existed). */
  anonymous?: boolean;
}

/** Permission -> minimal role, as api/auth/permissions.py (used only when `me` lists no permissions). */
const MIN_ROLE: Record<string, Role> = {
  "flows:read": "viewer",
  "historian:read": "viewer",
  "live:read": "viewer",
  "metrics:read": "viewer",
  "auth:self": "viewer",
  "tags:write_value": "operator",
  "alerts:ack": "operator",
  "flows:operate": "operator",
  "flows:write": "engineer",
  "flows:deploy": "engineer",
  "users:admin": "admin",
  "keys:admin": "admin",
  "settings:admin": "admin",
  "audit:read": "admin",
};

export function permissionsOf(role: Role): string[] {
  const rank = ROLES.indexOf(role);
  return Object.entries(MIN_ROLE)
    .filter(([, min]) => ROLES.indexOf(min) <= rank)
    .map(([p]) => p);
}

async function fetchMe(): Promise<Me | null> {
  try {
    return await api<Me>("/api/v1/auth/me", { noRedirect: true });
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return null;
    if (e instanceof ApiError && e.status === 404) {
      return { username: "anonymous", role: "admin", permissions: permissionsOf("admin"), anonymous: true };
    }
    throw e;
  }
}

interface AuthValue {
  me: Me | null;
  loading: boolean;
  can: (permission: string) => boolean;
  reload: () => Promise<unknown>;
}

const AuthContext = createContext<AuthValue>({ me: null, loading: true, can: () => false, reload: async () => undefined });

export function AuthProvider({ children }: { children: ReactNode }) {
  const client = useQueryClient();
  const query = useQuery({ queryKey: ["me"], queryFn: fetchMe, staleTime: 60_000, retry: false });
  const me = query.data ?? null;
  const granted = new Set(me ? (me.permissions.length ? me.permissions : permissionsOf(me.role)) : []);
  const value: AuthValue = {
    me,
    loading: query.isPending,
    can: (p) => granted.has(p),
    reload: () => client.invalidateQueries({ queryKey: ["me"] }),
  };
  return <AuthContext.Provider value={value}>{children}</AuthContext.Provider>;
}

export function useAuth(): AuthValue {
  return useContext(AuthContext);
}

/** Renders its children only when the user has `permission` (controls a role may not use are hidden). */
export function Can({ permission, children }: { permission: string; children: ReactNode }) {
  return useAuth().can(permission) ? <>{children}</> : null;
}
