// A minimal JSON writer (JsonUtility cannot write null or nested records the way the format needs).
using System.Globalization;
using System.Text;
using UnityEngine;

namespace Rls3.Bridge
{
    public class Rls3Json
    {
        readonly StringBuilder m_Sb = new StringBuilder(2048);
        bool m_NeedComma;

        public Rls3Json BeginObject() { Sep(); m_Sb.Append('{'); m_NeedComma = false; return this; }
        public Rls3Json EndObject() { m_Sb.Append('}'); m_NeedComma = true; return this; }
        public Rls3Json BeginArray() { Sep(); m_Sb.Append('['); m_NeedComma = false; return this; }
        public Rls3Json EndArray() { m_Sb.Append(']'); m_NeedComma = true; return this; }

        public Rls3Json Key(string k) { Sep(); Str(k); m_Sb.Append(':'); m_NeedComma = false; return this; }
        public Rls3Json Value(string s) { Sep(); if (s == null) m_Sb.Append("null"); else Str(s); m_NeedComma = true; return this; }
        public Rls3Json Value(bool b) { Sep(); m_Sb.Append(b ? "true" : "false"); m_NeedComma = true; return this; }
        public Rls3Json Value(int i) { Sep(); m_Sb.Append(i.ToString(CultureInfo.InvariantCulture)); m_NeedComma = true; return this; }
        public Rls3Json Value(float f) { Sep(); m_Sb.Append(((double)f).ToString("R", CultureInfo.InvariantCulture)); m_NeedComma = true; return this; }
        public Rls3Json Null() { Sep(); m_Sb.Append("null"); m_NeedComma = true; return this; }
        public Rls3Json Vec(Vector3 v) { return BeginArray().Value(v.x).Value(v.y).Value(v.z).EndArray(); }

        public Rls3Json Strings(System.Collections.Generic.IEnumerable<string> items)
        {
            BeginArray();
            foreach (var s in items) Value(s);
            return EndArray();
        }

        public override string ToString() => m_Sb.ToString();

        void Sep() { if (m_NeedComma) m_Sb.Append(','); }

        void Str(string s)
        {
            m_Sb.Append('"');
            foreach (char c in s)
            {
                switch (c)
                {
                    case '"': m_Sb.Append("\\\""); break;
                    case '\\': m_Sb.Append("\\\\"); break;
                    case '\n': m_Sb.Append("\\n"); break;
                    case '\r': m_Sb.Append("\\r"); break;
                    case '\t': m_Sb.Append("\\t"); break;
                    default:
                        if (c < 0x20) m_Sb.Append("\\u").Append(((int)c).ToString("x4"));
                        else m_Sb.Append(c); // UTF-8 on the wire; non-ASCII names are fine
                        break;
                }
            }
            m_Sb.Append('"');
        }
    }
}
