// The app shell: top bar (live badge, user menu), navigation, and the routes of CONTRACT.md. Pages that
// pull in big libraries (the designer's graph editor, the historian's chart) load on first visit.
import { lazy, Suspense, type ReactNode } from "react";
import { createBrowserRouter, Navigate, NavLink, Outlet, useLocation } from "react-router";
import { useAuth } from "./api/auth";
import { useLiveStatus } from "./api/live";
import UserMenu from "./components/UserMenu";
import OverviewPage from "./pages/OverviewPage";
import LoginPage from "./pages/LoginPage";

const DevicesPage = lazy(() => import("./pages/DevicesPage"));
const FlowsPage = lazy(() => import("./pages/FlowsPage"));
const DesignerPage = lazy(() => import("./designer/DesignerPage"));
const HistorianPage = lazy(() => import("./pages/HistorianPage"));
const AlertsPage = lazy(() => import("./pages/AlertsPage"));
const OeePage = lazy(() => import("./pages/OeePage"));
const AuditPage = lazy(() => import("./pages/AuditPage"));

interface NavItem {
  to: string;
  label: string;
  permission?: string;
}

const NAV: NavItem[] = [
  { to: "/", label: "Overview" },
  { to: "/devices", label: "Devices & tags" },
  { to: "/flows", label: "Flows" },
  { to: "/historian", label: "Historian" },
  { to: "/alerts", label: "Alerts" },
  { to: "/oee", label: "OEE" },
  { to: "/audit", label: "Audit log", permission: "audit:read" },
];

function Shell() {
  const { me, loading, can } = useAuth();
  const location = useLocation();
  const liveOpen = useLiveStatus(me !== null);
  if (loading) return <div className="page muted">Loading…</div>;
  if (!me) return <Navigate to={`/login?next=${encodeURIComponent(location.pathname + location.search)}`} replace />;
  return (
    <div className="shell">
      <header className="topbar">
        <span className="brand">NEXUS Edge</span>
        <span className={`badge ${liveOpen ? "good" : "muted"}`} title="live updates over the WebSocket">
          {liveOpen ? "live" : "offline"}
        </span>
        <span className="spacer" />
        <UserMenu />
      </header>
      <nav className="nav" aria-label="main">
        {NAV.filter((n) => !n.permission || can(n.permission)).map((n) => (
          <NavLink key={n.to} to={n.to} end={n.to === "/"}>
            {n.label}
          </NavLink>
        ))}
      </nav>
      <main className="main">
        <Suspense fallback={<div className="page muted">Loading…</div>}>
          <Outlet />
        </Suspense>
      </main>
    </div>
  );
}

function RequirePermission({ permission, children }: { permission: string; children: ReactNode }) {
  const { can } = useAuth();
  if (!can(permission)) {
    return (
      <section className="page">
        <h1>Not allowed</h1>
        <p className="muted">Your role may not open this page ({permission}).</p>
      </section>
    );
  }
  return <>{children}</>;
}

export const router = createBrowserRouter([
  { path: "/login", element: <LoginPage /> },
  {
    element: <Shell />,
    children: [
      { path: "/", element: <OverviewPage /> },
      { path: "/devices", element: <DevicesPage /> },
      { path: "/flows", element: <FlowsPage /> },
      { path: "/flows/:id", element: <DesignerPage /> },
      { path: "/historian", element: <HistorianPage /> },
      { path: "/alerts", element: <AlertsPage /> },
      { path: "/oee", element: <OeePage /> },
      {
        path: "/audit",
        element: (
          <RequirePermission permission="audit:read">
            <AuditPage />
          </RequirePermission>
        ),
      },
      { path: "*", element: <section className="page"><h1>Not found</h1></section> },
    ],
  },
]);
