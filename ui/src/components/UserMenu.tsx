// The user menu: who is logged in, their role, log out (POST /api/v1/auth/logout).
import { useState } from "react";
import { useQueryClient } from "@tanstack/react-query";
import { useAuth } from "../api/auth";
import { api } from "../api/client";

export default function UserMenu() {
  const { me } = useAuth();
  const client = useQueryClient();
  const [open, setOpen] = useState(false);
  if (!me) return null;

  async function logout() {
    try {
      await api("/api/v1/auth/logout", { method: "POST", noRedirect: true });
    } finally {
      client.clear();
      window.location.assign("/login");
    }
  }

  return (
    <div className="menu">
      <button aria-haspopup="menu" aria-expanded={open} onClick={() => setOpen(!open)} data-testid="user-menu">
        {me.username} <span className="muted">({me.role})</span>
      </button>
      {open && (
        <div className="menu-list" role="menu">
          <span className="muted">Signed in as {me.username}, role {me.role}</span>
          <button role="menuitem" onClick={logout}>
            Log out
          </button>
        </div>
      )}
    </div>
  );
}
