/** Status lines and JSON bodies of the ingest contract (DESIGN.md, "Ingest responses"). */

export const STATUS_LINE: Record<number, string> = {
  200: '200 OK',
  201: '201 Created',
  202: '202 Accepted',
  400: '400 Bad Request',
  401: '401 Unauthorized',
  404: '404 Not Found',
  405: '405 Method Not Allowed',
  413: '413 Content Too Large',
  500: '500 Internal Server Error',
  503: '503 Service Unavailable',
};

export function okBody(id: string): string {
  return `{"status":"OK","id":"${id}"}`;
}

export function errorBody(error: string): string {
  return JSON.stringify({ status: 'ERROR', error });
}
