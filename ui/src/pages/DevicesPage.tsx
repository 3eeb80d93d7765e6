export default function DevicesPage() {
  return (
    <section className="page">
      <h1>Devices</h1>
    </section>
  );
}
