/**
 * Topic matching: a subscription matches a topic exactly, or, when it ends in `.*`, every topic
 * that starts with the part before the `*` (`metrics.*` matches `metrics.batch`, `metrics.host.a`).
 * A lone `*` matches every topic.
 */
export function topicMatches(pattern: string, topic: string): boolean {
  if (pattern === topic || pattern === '*') return true;
  return pattern.endsWith('.*') && topic.startsWith(pattern.slice(0, -1));
}
