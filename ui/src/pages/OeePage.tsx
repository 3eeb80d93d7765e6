export default function OeePage() {
  return (
    <section className="page">
      <h1>Oee</h1>
    </section>
  );
}
