// Who is logged in (GET /api/v1/auth/me) and what they may do: the permissions come from the API
// (api/auth/permissions.py), never from a copy of its table here.
import { createContext, useContext, type ReactNode } from "react";
import { useQuery, useQueryClient } from "@tanstack/react-query";
import { api, ApiError } from "./client";

export const ROLES = ["viewer", "operator", "engineer", "admin"] as const;
export type Role = (typeof ROLES)[number];

export interface Me {
  username: string;
  role: Role;
  permissions: string[];
}

async function fetchMe(): Promise<Me | null> {
  try {
    return await api<Me>("/api/v1/auth/me", { noRedirect: true });
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return null;
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
  const granted = new Set(me?.permissions ?? []);
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
